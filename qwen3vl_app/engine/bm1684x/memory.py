"""Does the bmodel fit in the device's memory?  Said before loading, and after a failed load.

A bmodel that does not fit fails deep inside the vendor runtime ("cannot load bmodel", or
an allocation error of ours): the worker would report only that.  This module turns it
into "not enough device memory" with the sizes: what the bmodel asks for (read from the
file: `bmodel_file`, `cost.file_memory`) and what the device's heaps have free (the
driver's heap statistics; on an SE7 the NPU may also allocate from the VPU and VPP heaps,
so their free bytes count too).

Rules: the check before loading refuses only when the file's own figure exceeds every
heap's free bytes together (it never refuses a model that could load); a device that
reports no heaps (the cmodel simulator) is not checked.  The message names the fix
(docs/operations.md, "Device memory").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from .bmodel_file import BmodelFormatError, read_bmodel
from .cost import InstanceMemory, file_memory

HEAP_NAMES = {0: "npu", 1: "vpu", 2: "vpp"}  # SE7 (BM1684X SoC) heap ids
# what the runtime and our allocator say when device memory runs out
_ALLOC_FAILURE = re.compile(
    r"bm_malloc_device_byte failed|alloc failed|device memory is not enough|not enough|out of memory|memory exhausted",
    re.IGNORECASE,
)


class DeviceMemoryError(RuntimeError):
    """The bmodel does not fit in the device memory that is free (the message has the sizes)."""


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


def bmodel_needs(bmodel: Path) -> InstanceMemory | None:
    """Device memory the bmodel asks for at load (None when the file cannot be read)."""
    try:
        return file_memory(read_bmodel(bmodel))
    except (OSError, BmodelFormatError):
        return None


def describe_heaps(heaps: Sequence[dict]) -> str:
    def one(h: dict) -> str:
        name = HEAP_NAMES.get(int(h["id"]), f"heap {h['id']}")
        return f"{name} {_mib(int(h['avail']))} free of {_mib(int(h['total']))}"

    return ", ".join(one(h) for h in heaps)


def message(bmodel: Path, devid: int, need: InstanceMemory | None, heaps: Sequence[dict], cause: str = "") -> str:
    parts = [f"not enough device memory to load {bmodel.name} on device {devid}"]
    if need is not None:
        parts.append(
            f"it needs {_mib(need.total)} (weights {_mib(need.weights)}, KV cache {_mib(need.kv)}, "
            f"activations {_mib(need.activations)}, other I/O {_mib(need.other)})"
        )
    if heaps:
        free = sum(int(h["avail"]) for h in heaps)
        parts.append(f"the device has {_mib(free)} free ({describe_heaps(heaps)})")
    text = "; ".join(parts) + (
        ". Stop other device users or workers (each worker loads its own copy), or give the NPU "
        "more memory (memory_edit.sh; docs/operations.md, 'Device memory')"
    )
    return text + (f" [runtime: {cause}]" if cause else "")


def check_fits(bmodel: Path, devid: int, heaps: Sequence[dict]) -> None:
    """Raise DeviceMemoryError when the bmodel's own figure exceeds all free heap bytes."""
    if not heaps:
        return
    need = bmodel_needs(bmodel)
    if need is None:
        return
    free = sum(int(h["avail"]) for h in heaps)
    if need.total > free:
        raise DeviceMemoryError(message(bmodel, devid, need, heaps))


def explain_load_failure(bmodel: Path, devid: int, error: str, heaps: Sequence[dict]) -> str | None:
    """The memory message for a failed load, when the failure is one: the error text is an
    allocation failure, or the runtime refused the bmodel while the heaps show less free
    than it needs.  None otherwise (the original error stands)."""
    need = bmodel_needs(bmodel)
    short = bool(heaps) and need is not None and need.total > sum(int(h["avail"]) for h in heaps)
    if _ALLOC_FAILURE.search(error) or (error.startswith("cannot load bmodel") and short):
        return message(bmodel, devid, need, heaps, cause=error)
    return None
