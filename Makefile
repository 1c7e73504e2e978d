# Two commands do all the set-up on a fresh machine:  `make run`  and  `make test`.
PYTHON ?= python3
## BM_MODE=sim (default): everything, tests included, the BM1684X simulated by the cmodel.
## BM_MODE=box (on the SE7): only the serving requirements (+ pybind11 to build the module).
BM_MODE ?= sim
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
REQS   := requirements.txt requirements-torch.txt requirements-dev.txt pyproject.toml
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: install run test test-fast lint unit tiny-model native tiny-bmodel bmodel model load bench bench-sim soak clean

install: $(STAMP)

$(STAMP): $(REQS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
ifeq ($(BM_MODE),box)
	$(BIN)/pip install -q -r requirements.txt "setuptools>=68"
else
	$(BIN)/pip install -q -r requirements.txt -r requirements-torch.txt -r requirements-dev.txt
endif
	$(BIN)/pip install -q --no-build-isolation -e .
	touch $@

## Serve on :8899 (the tiny random-weight demo model unless ./models/qwen3vl_2b or -m exists).
## Extra flags: make run ARGS="-m /path/to/model --workers 2"
run: install
	$(BIN)/python -m qwen3vl_app $(ARGS)

## The whole suite (unit, live gunicorn + openai client, nginx, fuzzing, and the BM1684X
## engine on the vendor's cmodel simulator).
## Two pytest runs: the vendor simulator libraries switch the CPU to flush-to-zero when they
## load (fast-math), which would change float parsing for every later test in that process.
test: install native
	$(BIN)/python -m pytest --ignore=tests/native $(PYTEST_ARGS)
	$(BIN)/python -m pytest tests/native $(PYTEST_ARGS)

## The inner loop: everything not marked slow (no soak, fuzzing, worker kills or simulator);
## the HTTP contract runs in-process over a fake engine, the rest against live gunicorn.
test-fast: install
	$(BIN)/python -m pytest --ignore=tests/native -m "not slow" $(PYTEST_ARGS)

## ruff (lint + format check) and mypy on the package, as configured in pyproject.toml.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

## Fetch a published BM1684X build into models/<MODEL>/ (bmodel + config/), checked; re-running resumes
## or does nothing.  `make model MODEL=qwen3vl_4b`; list: `python -m qwen3vl_app.devtools.model_fetch --list`.
## The vendor serves bmodels through its `dfss` client (installed here on first use) unless
## QWEN3VL_MODEL_MIRROR names an http(s) folder holding the same files.
MODEL ?= qwen3vl_2b
MODELS_DIR ?= models
model: install
	@test -n "$$QWEN3VL_MODEL_MIRROR$$QWEN3VL_MODEL_MANIFEST" || $(BIN)/python -c "import dfss" 2>/dev/null \
		|| $(BIN)/pip install -q dfss
	$(BIN)/python -m qwen3vl_app.devtools.model_fetch $(MODEL) --models-dir $(MODELS_DIR)

## Build (or reuse) the tiny random-weight checkpoint; its folder is the last line printed.
## THINKING=1: the same weights with a Qwen3-VL Thinking chat template (docs/thinking.md).
tiny-model: install
	@$(BIN)/python -m $(if $(THINKING),qwen3vl_app.devtools.tiny_thinking,qwen3vl_app.devtools.tiny_model)

## The BM1684X module: BM_MODE=sim (default; runtime + cmodel from the tpu-mlir wheel on PyPI)
## or BM_MODE=box (libsophon at /opt/sophon/libsophon-current, on the SE7 / a PCIe host).
native: install
ifeq ($(BM_MODE),sim)
	PYTHON=$(BIN)/python bash native/fetch_sim_runtime.sh
endif
	cmake -S native -B native/build -DBM_MODE=$(BM_MODE) -DPython3_EXECUTABLE=$(CURDIR)/$(BIN)/python >/dev/null
	cmake --build native/build -j2

## Compile the tiny checkpoint for the BM1684X with tpu-mlir (Python 3.10 venv, cached);
## the model folder is the last line printed.
tiny-bmodel: install
	@$(BIN)/python scripts/build_tiny_bmodel.py

## Compile any Hugging Face Qwen3-VL checkpoint for the BM1684X with the published bmodels'
## options (w4bf16, SEQLEN 2048, max input 1024, 768x768 pixels, token-id lm_head):
##   make bmodel HF=/path/to/Qwen3-VL-4B-Instruct [OUT=models/qwen3vl_4b] [ARGS=--do_sample]
##   ARGS=--use_history_kv: chunked prefill that keeps a chat's earlier turns (docs/multi-turn.md)
##   ARGS="--do_sample --speculative 4": also the verify nets of speculative decoding (docs/speculative.md)
##   ARGS="--lm_head w8": a weight-only int8 (or w4: int4) lm_head, untied (docs/operations.md)
## Needs Python 3.10 (tpu-mlir) and a few GB of disk for its venv; the folder is the last line.
bmodel: install
	@test -n "$(HF)" || { echo "usage: make bmodel HF=<checkpoint folder> [OUT=<model folder>]"; exit 2; }
	@$(BIN)/python scripts/build_bmodel.py "$(HF)" $(if $(OUT),--out "$(OUT)") $(if $(ARGS),-- $(ARGS))

## BM1684X engine on the simulator: the device-cost table (bytes, launches, syncs, d2d, memsets,
## host<->device bytes and host ms per decode step; tiny bf16/W8/W4 lm_head and batch-4 measured,
## 2B/4B modelled with SE7 tok/s), device memory per instance, host ms per image,
## batch-4 decode, and multi-turn TTFT on the tiny history-KV bmodel,
## and speculative decoding (launches per token with the verify nets of the tiny --speculative 4
## bmodel vs K=0).
bench-sim: install native
	$(BIN)/python bench/bench_sim.py $(ARGS)
	$(BIN)/python bench/bench_sim_batch.py
	$(BIN)/python bench/bench_multiturn.py --sim
	$(BIN)/python bench/bench_sim_speculative.py

## Load test: a local server + locust headless for LOAD_TIME (text/image/video streams; TTFT, ITL).
LOAD_TIME ?= 30s
LOAD_USERS ?= 4
load: install
	$(BIN)/python bench/load.py --time $(LOAD_TIME) --users $(LOAD_USERS) $(ARGS)

## Benchmark (< 5 min): TTFT/TPOT/req/s/tok/s at 1,2,4 clients x 1,2 workers, server overhead,
## worker RSS (torch-free vs torch), preprocessing vs transformers, constrained-decoding cost per token,
## speculative decoding (tokens per engine step, draft acceptance) vs K=0.
## JSON, then a table.
bench: install
	$(BIN)/python bench/bench.py $(ARGS)
	$(BIN)/python bench/bench_multiturn.py $(ARGS)
	$(BIN)/python bench/bench_constraints.py $(ARGS)
	$(BIN)/python bench/bench_speculative.py

## Soak (~1 min, also part of `make test`): SOAK_REQUESTS mixed requests against 2 workers, then
## leaked temp files, fds and RSS growth per worker, printed.  Longer: make soak SOAK_REQUESTS=10000
SOAK_REQUESTS ?= 1200
soak: install
	QWEN3VL_SOAK_REQUESTS=$(SOAK_REQUESTS) QWEN3VL_SOAK_SECONDS=$$(( $(SOAK_REQUESTS) / 4 + 60 )) \
		$(BIN)/python -m pytest tests/resilience/test_soak.py -s $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) native/build .pytest_cache
