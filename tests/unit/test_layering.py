"""The layers of docs/architecture.md, read from the source's import statements: serving
knows no Flask and no api module, engines know no HTTP, schemas query no app, typed
requests know neither marshmallow nor Flask, and no serving code imports the command-line dev tools."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "qwen3vl_app"


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def sources(*patterns: str) -> list[Path]:
    return sorted({p for pat in patterns for p in PACKAGE.glob(pat)})


def offenders(files: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    out = {}
    for f in files:
        bad = sorted(n for n in imports_of(f) if any(n == x or n.startswith(x + ".") for x in forbidden))
        if bad:
            out[str(f.relative_to(PACKAGE))] = bad
    return out


def test_the_import_reader_sees_relative_and_absolute_imports():
    names = imports_of(PACKAGE / "api" / "chat.py")
    assert {"flask", "qwen3vl_app.serving", "qwen3vl_app.api.transport", "qwen3vl_app.protocol"} <= names


@pytest.mark.parametrize(
    ("patterns", "forbidden"),
    [
        # serving: plain Python that a test drives without an app
        (("serving.py", "structured.py", "protocol.py"), ("flask", "gevent", "socket", "qwen3vl_app.api")),
        # engines, prompts, media, processing: no HTTP
        (("engine/**/*.py", "prompt/*.py", "processing/*.py", "media/*.py"), ("flask", "qwen3vl_app.api")),
        # schemas validate what they are given: no app to query
        (("api/*_schema.py",), ("flask",)),
        # typed requests: no wire library either
        (("protocol.py",), ("marshmallow", "qwen3vl_app.serving", "qwen3vl_app.engine")),
    ],
)
def test_layers_import_only_what_is_below_them(patterns, forbidden):
    files = sources(*patterns)
    assert files
    assert offenders(files, forbidden) == {}


def test_flask_stays_in_the_api_package():
    """Outside api/, only the app factory (`create_app`) knows Flask."""
    files = [p for p in sources("**/*.py") if p.relative_to(PACKAGE).parts[0] != "api" and p != PACKAGE / "__init__.py"]
    assert offenders(files, ("flask", "flask_httpauth")) == {}


def test_no_serving_module_imports_the_dev_tools():
    files = [p for p in sources("**/*.py") if "devtools" not in p.parts]
    assert offenders(files, ("qwen3vl_app.devtools",)) == {}
