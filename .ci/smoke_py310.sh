#!/usr/bin/env bash
# Python 3.10 smoke run of the serving path, as the SE7 would run it: a venv with only the
# serving requirements, the native module built for that Python, and the server with the
# bm1684x engine (on the simulator here) answering one text and one image chat.
# The tiny bmodel comes from the main venv (its checkpoint needs torch): run after `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY310="${PYTHON310:-$(.venv/bin/python -c 'import sys; sys.path.insert(0, "scripts"); from build_bmodel import find_python310; print(find_python310())')}"
VENV=.venv-py310
test -x "$VENV/bin/python" || "$PY310" -m venv "$VENV"
"$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 10), sys.version'
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -r requirements.txt
PYTHON="$VENV/bin/python" bash native/fetch_sim_runtime.sh >/dev/null
cmake -S native -B native/build-py310 -DBM_MODE=sim -DPython3_EXECUTABLE="$PWD/$VENV/bin/python" >/dev/null
cmake --build native/build-py310 -j2 >/dev/null
MODEL="$(.venv/bin/python scripts/build_tiny_bmodel.py | tail -1)"
"$VENV/bin/python" .ci/smoke_serve.py "$MODEL"
