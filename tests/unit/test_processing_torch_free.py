"""The serving path's media code must not pull in torch, transformers or qwen_vl_utils."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "torchvision", "transformers", "qwen_vl_utils")


def test_media_and_processing_import_without_torch():
    code = (
        "import sys, json\n"
        "import qwen3vl_app.media.sniff, qwen3vl_app.media.sources, qwen3vl_app.errors, qwen3vl_app.serving\n"
        "import qwen3vl_app.prompt.build\n"
        "import qwen3vl_app.processing.vision, qwen3vl_app.processing.video, qwen3vl_app.prompt.vision\n"
        "import pkgutil, importlib, qwen3vl_app.processing as P, qwen3vl_app.media as M, qwen3vl_app.prompt as Q\n"
        "for pkg in (P, M, Q):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(pkg.__name__ + '.' + m.name)\n"
        "from qwen3vl_app.processing.vision import image_from_bytes\n"
        "import io; from PIL import Image\n"
        "b = io.BytesIO(); Image.new('RGB', (64, 64)).save(b, 'PNG'); image_from_bytes(b.getvalue())\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
