#!/usr/bin/env bash
# Fetch the BM1684X runtime + cmodel simulator libraries for the `sim` build.
#
# Downloads the `tpu_mlir` wheel from PyPI (cached outside the checkout) and extracts only
# the four shared libraries that are opened at run time into native/_sdk/lib (ignored by
# git).  Nothing vendor-made is committed.
#
#   native/fetch_sim_runtime.sh [DEST_DIR]
#
# Env: PYTHON (a python with pip; default: the repo's .venv or python3),
#      QWEN3VL_CACHE_DIR (default ~/.cache/qwen3vl-server), TPU_MLIR_VERSION (1.30.2).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEST="${1:-$HERE/_sdk}"
VERSION="${TPU_MLIR_VERSION:-1.30.2}"
CACHE="${QWEN3VL_CACHE_DIR:-$HOME/.cache/qwen3vl-server}/wheels"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$HERE/../.venv/bin/python" ]]; then PYTHON="$HERE/../.venv/bin/python"; else PYTHON=python3; fi
fi
WHEEL="$CACHE/tpu_mlir-$VERSION-py3-none-any.whl"

if [[ -f "$DEST/lib/.stamp-$VERSION" ]]; then
  echo "sim runtime already in $DEST/lib"
  exit 0
fi
mkdir -p "$CACHE"
if [[ ! -f "$WHEEL" ]]; then
  echo "downloading tpu_mlir==$VERSION wheel (about 300 MB) into $CACHE"
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.10 \
    "tpu_mlir==$VERSION" -d "$CACHE" >&2
fi
mkdir -p "$DEST/lib"
"$PYTHON" - "$WHEEL" "$DEST/lib" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
# member in the wheel -> name the loader looks for
wanted = {
    "tpu_mlir/lib/libbmrt.so.1.0": ["libbmrt.so.1.0", "libbmrt.so"],
    "tpu_mlir/lib/libbmlib_bm1684x.so.0": ["libbmlib.so.0", "libbmlib.so"],
    "tpu_mlir/lib/libcmodel_bm1684x.so": ["libcmodel.so"],
    "tpu_mlir/lib/libcpuop.so": ["libcpuop.so"],
}
with zipfile.ZipFile(wheel) as z:
    for member, names in wanted.items():
        data = z.read(member)
        first = os.path.join(dest, names[0])
        with open(first + ".tmp", "wb") as f:
            f.write(data)
        os.chmod(first + ".tmp", 0o755)
        os.replace(first + ".tmp", first)
        for alias in names[1:]:
            p = os.path.join(dest, alias)
            if os.path.lexists(p):
                os.remove(p)
            os.symlink(names[0], p)
        print(f"  {member} -> {first}")
PY
touch "$DEST/lib/.stamp-$VERSION"
echo "sim runtime ready in $DEST/lib"
