#!/usr/bin/env python3
"""Compile a Hugging Face Qwen3-VL checkpoint into a BM1684X model folder with tpu-mlir.

    python scripts/build_bmodel.py HF_FOLDER [--out DIR] [-- extra llm_convert args]
    make bmodel HF=/path/to/Qwen3-VL-4B-Instruct [OUT=models/qwen3vl_4b]

By default with the options of the vendor's published bmodels (w4bf16 weights, SEQLEN
2048, MAX_INPUT_LENGTH 1024, a 768x768-pixel vision encoder, `lm_head` returning the token
id); the folder written is `<bmodel>` + `config/` (tokenizer, processor and model json),
which is what the bm1684x engine loads.  The last line printed is the folder.

1. creates, once, a Python 3.10 virtualenv outside the checkout with tpu-mlir (the vendor
   compiler, Python 3.10 only) and what its `llm_convert` needs;
2. runs `llm_convert` (GNU `parallel` is installed with apt-get when missing, root only);
3. writes the folder atomically.  `scripts/build_tiny_bmodel.py` uses the same steps for the
   tiny random-weight test model, cached by a hash of its inputs.

Cache root: $QWEN3VL_CACHE_DIR or ~/.cache/qwen3vl-server.  Python 3.10: $TPU_MLIR_PYTHON,
else `python3.10` on PATH, else pyenv's 3.10.x.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from qwen3vl_app.devtools.tiny_model import cache_root  # noqa: E402  (one cache root for every builder)

TPU_MLIR_VERSION = "1.30.2"
TORCH_FOR_CONVERTER = "torch==2.11.0"  # what tpu_mlir 1.30.2's [torch] extra pins
EXTRA_PACKAGES = ["psutil", "flatbuffers"]
# what the vendor's published Qwen3-VL bmodels for the SE7 are compiled with
PUBLISHED_ARGS = [
    "-s",
    "2048",
    "--max_input_length",
    "1024",
    "-q",
    "w4bf16",
    "-c",
    "bm1684x",
    "--max_pixels",
    "768,768",
]
HISTORY_KV_FLAGS = ("--use_history_kv", "--use_block_with_kv")


def convert_args(extra: list[str]) -> list[str]:
    """The published options plus `extra`.  A history-KV build (chunked prefill that keeps
    earlier turns' KV) gets its chunk length from llm_convert (SEQLEN/4, or --chunk_length),
    which refuses an explicit --max_input_length."""
    base = list(PUBLISHED_ARGS)
    if any(flag in extra for flag in HISTORY_KV_FLAGS):
        i = base.index("--max_input_length")
        del base[i : i + 2]
    return base + extra


# removed from the wheel's lib/third_party: its own glibc breaks the host's processes
BUNDLED_LIBC = ["libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1"]


def say(msg: str) -> None:
    print(f"[bmodel] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], log: Path | None = None, **kw) -> None:
    say("$ " + " ".join(str(c) for c in cmd))
    if log is None:
        subprocess.run(cmd, check=True, stdout=sys.stderr, **kw)
        return
    with open(log, "ab") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kw)
    if r.returncode != 0:
        tail = log.read_bytes()[-6000:].decode("utf-8", "replace")
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(map(str, cmd))}\n--- {log} (tail) ---\n{tail}")


def find_python310() -> str:
    cands = [os.environ.get("TPU_MLIR_PYTHON"), shutil.which("python3.10")]
    roots = [os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv"), "/root/.pyenv"]
    for root in filter(None, roots):
        cands += sorted(glob.glob(f"{root}/versions/3.10*/bin/python3.10"), reverse=True)
    for c in cands:
        if not c or not os.access(c, os.X_OK):
            continue
        try:  # a pyenv shim on PATH may exist without the version being selected
            r = subprocess.run(
                [c, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0 and r.stdout.strip() == "True":
            return c
    raise SystemExit("tpu-mlir needs Python 3.10: none found (set TPU_MLIR_PYTHON, or `pyenv install 3.10`)")


def ensure_parallel() -> None:
    if shutil.which("parallel"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit("tpu-mlir's llm_convert needs GNU parallel: apt-get install -y parallel")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "parallel"], env=env)


def ensure_wheel(root: Path, pip_python: str) -> Path:
    wheels = root / "wheels"
    wheel = wheels / f"tpu_mlir-{TPU_MLIR_VERSION}-py3-none-any.whl"
    if not wheel.exists():
        wheels.mkdir(parents=True, exist_ok=True)
        run(
            [
                pip_python,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.10",
                f"tpu_mlir=={TPU_MLIR_VERSION}",
                "-d",
                str(wheels),
            ]
        )
    return wheel


def ensure_venv(root: Path) -> Path:
    venv = root / f"tpu-mlir-venv-{TPU_MLIR_VERSION}"
    stamp = venv / ".qwen3vl-ready"
    if stamp.exists():
        return venv
    py = find_python310()
    wheel = ensure_wheel(root, sys.executable)
    if venv.exists():
        shutil.rmtree(venv)
    t0 = time.time()
    say(f"creating {venv} with {py} (tpu-mlir + torch: a few GB, a few minutes)")
    run([py, "-m", "venv", str(venv)])
    vpy = str(venv / "bin" / "python")
    log = root / "tpu-mlir-venv-install.log"
    log.unlink(missing_ok=True)
    run([vpy, "-m", "pip", "install", "-q", "--upgrade", "pip"], log=log)
    run([vpy, "-m", "pip", "install", "-q", str(wheel), TORCH_FOR_CONVERTER, *EXTRA_PACKAGES], log=log)
    third = Path(glob.glob(str(venv / "lib" / "python3.10" / "site-packages" / "tpu_mlir" / "lib" / "third_party"))[0])
    moved = third.parent / "third_party_disabled"
    moved.mkdir(exist_ok=True)
    for name in BUNDLED_LIBC:
        if (third / name).exists():
            shutil.move(str(third / name), str(moved / name))
    stamp.write_text(f"tpu_mlir=={TPU_MLIR_VERSION}\n")
    say(f"tpu-mlir venv ready in {time.time() - t0:.0f} s")
    return venv


def batch_of(convert_args: list[str]) -> int:
    """The `-b` / `--batch` of llm_convert arguments (1 when absent)."""
    for i, a in enumerate(convert_args):
        if a in ("-b", "--batch") and i + 1 < len(convert_args):
            return int(convert_args[i + 1])
        if a.startswith("--batch="):
            return int(a.split("=", 1)[1])
    return 1


def convert_tool(venv: Path, convert_args: list[str]) -> list[str]:
    """`llm_convert`, or for a batch-N build (which tpu-mlir 1.30.2 cannot make), for
    `--speculative K` (the verify nets, docs/speculative.md) and `--lm_head w8|w4` our
    wrapper around it (scripts/llm_convert_patched.py, docs/batching.md)."""
    ours = ("--speculative", "--lm_head")  # our options: llm_convert does not know them
    if batch_of(convert_args) > 1 or any(a.split("=")[0] in ours for a in convert_args):
        return [str(venv / "bin" / "python"), str(REPO / "scripts" / "llm_convert_patched.py"), "--convert"]
    return [str(venv / "bin" / "llm_convert")]


def convert(ckpt: Path, venv: Path, work: Path, convert_args: list[str]) -> Path:
    ensure_parallel()
    env = dict(os.environ)
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"  # model_deploy.py etc. must run on the venv's python
    env.pop("PYTHONPATH", None)
    out = work / "out"
    t0 = time.time()
    run(
        [*convert_tool(venv, convert_args), "-m", str(ckpt), *convert_args, "-o", str(out)],
        log=work / "llm_convert.log",
        cwd=work,
        env=env,
    )
    say(f"llm_convert took {time.time() - t0:.0f} s")
    found = sorted(out.glob("*.bmodel"))
    if len(found) != 1:
        raise SystemExit(f"expected one bmodel in {out}, found {found}")
    return found[0]


def write_folder(ckpt: Path, bmodel: Path, final: Path, name: str) -> None:
    """`final`/{name, config/} with the checkpoint's non-weight files, replaced atomically."""
    stage = final.parent / f".{final.name}.partial"
    if stage.exists():
        shutil.rmtree(stage)
    (stage / "config").mkdir(parents=True)
    shutil.copy2(bmodel, stage / name)
    for p in ckpt.iterdir():
        if p.is_file() and not p.name.endswith((".safetensors", ".bin", ".pt", ".pth", ".gguf")):
            shutil.copy2(p, stage / "config" / p.name)
    if final.exists():
        shutil.rmtree(final)
    stage.rename(final)


def compile_folder(ckpt: Path, final: Path, convert_args: list[str], name: str | None = None) -> Path:
    """Compile `ckpt` with llm_convert `convert_args` into the model folder `final`."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = ensure_venv(root)
    work = Path(tempfile.mkdtemp(prefix="bmodel-build-", dir=root))
    try:
        bmodel = convert(ckpt, venv, work, convert_args)
        final.parent.mkdir(parents=True, exist_ok=True)
        write_folder(ckpt, bmodel, final, name or bmodel.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="Hugging Face Qwen3-VL checkpoint folder")
    ap.add_argument("--out", type=Path, help="model folder to write (default: models/<checkpoint>-bm1684x)")
    ap.add_argument(
        "extra",
        nargs="*",
        help="more llm_convert arguments (after --), e.g. --do_sample, --use_history_kv for multi-turn reuse; "
        "ours: --speculative K for the speculative-decoding verify nets (with --do_sample), "
        "--lm_head w8|w4 (weight-only int8/int4 lm_head, untied from the embedding; docs/operations.md)",
    )
    args = ap.parse_args()
    ckpt = args.checkpoint.resolve()
    if not (ckpt / "config.json").exists():
        raise SystemExit(f"{ckpt} is not a Hugging Face checkpoint folder (no config.json)")
    final = (args.out or REPO / "models" / f"{ckpt.name}-bm1684x").resolve()
    t0 = time.time()
    compile_folder(ckpt, final, convert_args(args.extra))
    say(f"built in {time.time() - t0:.0f} s: {final}")
    print(final)


if __name__ == "__main__":
    main()
