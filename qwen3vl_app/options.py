"""A setting as the CLI and the environment see it, declared on a frozen dataclass field.

`opt(default, flags, help)` makes the field; `options_of(cls, prefix)` reads them back as
`Option`s.  The server's `Settings` and each engine's own settings class (declared in its
package, `engine/<name>/__init__.py`) are written this way; `settings.py` gathers all of
them into one CLI and one set of `QWEN3VL_*` variables.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

ENV_PREFIX = "QWEN3VL_"


def opt(default: Any, flags: tuple[str, ...], help: str, choices: tuple[str, ...] = (), secret: bool = False) -> Any:
    return field(default=default, repr=not secret, metadata={"flags": flags, "help": help, "choices": choices})


@dataclass(frozen=True)
class Option:
    """One setting as the CLI and the environment see it (derived from a dataclass field)."""

    name: str  # the argparse dest; its variable is QWEN3VL_<NAME>
    flags: tuple[str, ...]
    default: Any
    help: str
    kind: type  # str | int | float | bool | tuple
    choices: tuple[str, ...] = ()
    field: str = ""  # the dataclass field it fills (the name without its group's prefix)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def parse(self, raw: str) -> Any:
        if self.kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if self.kind is tuple:
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        if self.choices and raw not in self.choices:
            raise ValueError(f"{self.env}={raw!r}: choose one of {', '.join(self.choices)}")
        try:
            return self.kind(raw)
        except ValueError:
            raise ValueError(f"{self.env}={raw!r} is not a valid {self.kind.__name__}") from None


def options_of(cls: type, prefix: str = "") -> tuple[Option, ...]:
    """The options of every `opt` field of dataclass `cls`, named `prefix + field`."""
    return tuple(_option(f, prefix) for f in fields(cls) if "flags" in f.metadata)


def _option(f: Field, prefix: str) -> Option:
    assert f.default is not MISSING
    meta = f.metadata
    return Option(prefix + f.name, meta["flags"], f.default, meta["help"], type(f.default), meta["choices"], f.name)
