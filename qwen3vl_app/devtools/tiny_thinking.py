"""The tiny random-weight checkpoint as a *Thinking* model, for tests and demos.

The same folder as `qwen3vl_app.devtools.tiny_model` (its weights hard-linked, not copied) with a
chat template that behaves as the Qwen3-VL-*-Thinking ones do: the generation prompt
opens `<think>` (so the output is `reasoning</think>answer`), and an earlier assistant
turn's `reasoning_content` appears in the prompt only for the turns after the last user
message (an ongoing tool-call chain); before that it is dropped.  `--hybrid` adds the
`enable_thinking` switch of hybrid templates (false: the prompt opens and closes an empty
thinking), so both behaviours of `chat_template_kwargs` can be tested.

Run ``python -m qwen3vl_app.devtools.tiny_thinking [--hybrid]`` (``make tiny-model THINKING=1``);
the folder's path is the last line printed.  Cached beside the tiny checkpoint, keyed by
its folder and this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..model_constants import DEMO_MARKER
from .tiny_model import CHAT_TEMPLATE, cache_root, ensure_tiny_checkpoint

_ROLE_HEADER = "{{ '<|im_start|>' + message['role'] + '\\n' }}"
_LAST_QUERY = (
    "{%- set ns = namespace(last_query=-1) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last_query = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
)
_REASONING = (
    "{%- if message['role'] == 'assistant' and message['reasoning_content'] and loop.index0 > ns.last_query -%}"
    "{{ '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n\\n' }}"
    "{%- endif -%}"
)
_PROMPT = "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
_THINKING_PROMPT = "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n<think>\\n' }}{%- endif -%}"
_HYBRID_PROMPT = (
    "{%- if add_generation_prompt -%}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}"
    "{%- else -%}{{ '<|im_start|>assistant\\n<think>\\n' }}{%- endif -%}"
    "{%- endif -%}"
)


def thinking_template(hybrid: bool = False) -> str:
    assert CHAT_TEMPLATE.count(_ROLE_HEADER) == 1 and CHAT_TEMPLATE.endswith(_PROMPT)
    body = CHAT_TEMPLATE[: -len(_PROMPT)].replace(_ROLE_HEADER, _ROLE_HEADER + _REASONING)
    return _LAST_QUERY + body + (_HYBRID_PROMPT if hybrid else _THINKING_PROMPT)


def write_thinking_templates(config_dir: Path, hybrid: bool = False) -> None:
    """Swap the chat template of a config folder (tokenizer_config.json and
    chat_template.json) for the Thinking one."""
    template = thinking_template(hybrid)
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = config_dir / name
        data = json.loads(path.read_text())
        data["chat_template"] = template
        path.unlink()  # it may be a hard link into the base folder
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _link_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_dir():
            _link_tree(item, dst / item.name)
            continue
        try:
            os.link(item, dst / item.name)
        except OSError:
            shutil.copy2(item, dst / item.name)


def ensure_tiny_thinking_checkpoint(hybrid: bool = False) -> Path:
    base = ensure_tiny_checkpoint()
    key = hashlib.sha256(f"{base.name}|{hybrid}|".encode() + Path(__file__).read_bytes()).hexdigest()[:16]
    final = cache_root() / f"tiny-qwen3vl-thinking{'-hybrid' if hybrid else ''}-{key}"
    if (final / DEMO_MARKER).exists():
        return final
    tmp = Path(tempfile.mkdtemp(prefix="tiny-thinking-", dir=final.parent))
    try:
        _link_tree(base, tmp)
        write_thinking_templates(tmp, hybrid)
        (tmp / DEMO_MARKER).unlink()  # written last: the folder is complete
        (tmp / DEMO_MARKER).write_text(
            json.dumps({"random_weights": True, "built_by": "qwen3vl_app.devtools.tiny_thinking"}) + "\n"
        )
        try:
            tmp.rename(final)
        except OSError:
            if not (final / DEMO_MARKER).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def thinking_bmodel_folder(bmodel_dir: Path) -> Path:
    """A BM1684X folder of the tiny model as a Thinking model: the same compiled `*.bmodel`
    (a symlink: the weights are the tiny checkpoint's either way) beside a `config/` with
    the Thinking template.  Cached beside `bmodel_dir`, keyed by its name and this file."""
    bmodel_dir = Path(bmodel_dir)
    key = hashlib.sha256(f"{bmodel_dir.name}|".encode() + Path(__file__).read_bytes()).hexdigest()[:16]
    final = bmodel_dir.parent / f"{bmodel_dir.name}-thinking-{key}"
    if (final / "config" / DEMO_MARKER).exists():
        return final
    tmp = Path(tempfile.mkdtemp(prefix="tiny-thinking-bmodel-", dir=bmodel_dir.parent))
    try:
        for bmodel in bmodel_dir.glob("*.bmodel"):
            (tmp / bmodel.name).symlink_to(bmodel.resolve())
        shutil.copytree(bmodel_dir / "config", tmp / "config")
        write_thinking_templates(tmp / "config")
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "config" / DEMO_MARKER).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


if __name__ == "__main__":
    folder = ensure_tiny_thinking_checkpoint(hybrid="--hybrid" in sys.argv[1:])
    print("tiny random-weight Qwen3-VL Thinking checkpoint:", file=sys.stderr)
    print(folder)
