"""What a `*.bmodel` file says about its networks' device memory, read without the device.

A bmodel is a 64-byte header (magic 0xFF55AAEE, header size, flatbuffer size, binary
size), a flatbuffer describing the networks, then the binary blobs (weights, commands).
This module reads the few flatbuffer fields the cost model and the load-time memory check
need, with its own small reader (numbers and field ids from the format's published
schema; no flatbuffers package): per network and stage the weight ("coeff") blob, the
activation ("ctx") sizes, the I/O block and the input/output tensors.

Rules:
- Read-only and pure Python: it runs on the SE7's A53 cores at load, and in `bench/`.
- Networks that share one weight blob (a combined bmodel stores identical weights once,
  e.g. an `lm_head` tied to the embedding) are counted once in `weight_bytes`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = 0xFF55AAEE
HEADER = struct.Struct("<IIII")
DTYPE_BYTES = {0: 4, 1: 2, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 4, 8: 2}  # bm_data_type_t
DTYPE_NAMES = {0: "f32", 1: "f16", 2: "i8", 3: "u8", 4: "i16", 5: "u16", 6: "i32", 7: "u32", 8: "bf16"}


class BmodelFormatError(ValueError):
    """The file is not a bmodel this reader understands."""


class _Table:
    """One flatbuffer table: fields by id (the schema's `id:` numbers)."""

    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        vt = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vt_len = struct.unpack_from("<H", buf, vt)[0]
        self.vt = vt

    def _off(self, fid: int) -> int:
        slot = 4 + 2 * fid
        if slot >= self.vt_len:
            return 0
        return struct.unpack_from("<H", self.buf, self.vt + slot)[0]

    def scalar(self, fid: int, fmt: str, default=0):
        o = self._off(fid)
        return struct.unpack_from("<" + fmt, self.buf, self.pos + o)[0] if o else default

    def struct_at(self, fid: int, fmt: str):
        """An inline struct (e.g. Binary {start, size: uint64})."""
        o = self._off(fid)
        return struct.unpack_from("<" + fmt, self.buf, self.pos + o) if o else None

    def _indirect(self, fid: int) -> int:
        o = self._off(fid)
        if not o:
            return 0
        p = self.pos + o
        return p + struct.unpack_from("<I", self.buf, p)[0]

    def string(self, fid: int) -> str:
        p = self._indirect(fid)
        if not p:
            return ""
        n = struct.unpack_from("<I", self.buf, p)[0]
        return self.buf[p + 4 : p + 4 + n].decode("utf-8", "replace")

    def table(self, fid: int) -> _Table | None:
        p = self._indirect(fid)
        return _Table(self.buf, p) if p else None

    def tables(self, fid: int) -> list[_Table]:
        p = self._indirect(fid)
        if not p:
            return []
        n = struct.unpack_from("<I", self.buf, p)[0]
        out = []
        for i in range(n):
            e = p + 4 + 4 * i
            out.append(_Table(self.buf, e + struct.unpack_from("<I", self.buf, e)[0]))
        return out

    def scalars(self, fid: int, fmt: str) -> list:
        p = self._indirect(fid)
        if not p:
            return []
        n = struct.unpack_from("<I", self.buf, p)[0]
        return list(struct.unpack_from(f"<{n}{fmt}", self.buf, p + 4))


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int  # elements x element size (what a launch reads or writes of it)


@dataclass(frozen=True)
class StageInfo:
    weight_start: int  # offset of the weight blob in the file's binary part (identity for sharing)
    weight_bytes: int
    ctx_bytes: int  # activation memory (the largest of its groups when there are several)
    io_bytes: int  # the I/O block (io_alone builds), else 0
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    @property
    def input_bytes(self) -> int:
        return sum(t.nbytes for t in self.inputs)

    @property
    def output_bytes(self) -> int:
        return sum(t.nbytes for t in self.outputs)


@dataclass(frozen=True)
class NetInfo:
    name: str
    stages: tuple[StageInfo, ...]

    @property
    def weight_bytes(self) -> int:
        return max((s.weight_bytes for s in self.stages), default=0)


@dataclass
class BmodelInfo:
    path: Path
    chip: str
    nets: dict[str, NetInfo] = field(default_factory=dict)
    binary_bytes: int = 0  # the file's binary part: weights + commands + kernels
    neuron_bytes: int = 0  # the model's declared activation size

    def net(self, name: str) -> NetInfo | None:
        return self.nets.get(name)

    @property
    def weight_bytes(self) -> int:
        """Every distinct weight blob once (device memory the weights take)."""
        seen: dict[tuple[int, int], int] = {}
        for n in self.nets.values():
            for s in n.stages:
                if s.weight_bytes:
                    seen[(s.weight_start, s.weight_bytes)] = s.weight_bytes
        return sum(seen.values())

    def shared_weights(self, a: str, b: str) -> bool:
        """Whether nets `a` and `b` read the same weight blob (a tied lm_head/embedding)."""
        na, nb = self.nets.get(a), self.nets.get(b)
        if not na or not nb:
            return False
        ka = {(s.weight_start, s.weight_bytes) for s in na.stages if s.weight_bytes}
        return bool(ka & {(s.weight_start, s.weight_bytes) for s in nb.stages if s.weight_bytes})

    @property
    def io_bytes(self) -> int:
        return sum(max((s.io_bytes for s in n.stages), default=0) for n in self.nets.values())

    @property
    def ctx_bytes(self) -> int:
        """Activation memory with every net sharing one region (as the runtime loads them)."""
        return max([self.neuron_bytes] + [s.ctx_bytes for n in self.nets.values() for s in n.stages])


def _tensor(t: _Table, stage: int) -> TensorInfo:
    dtype = t.scalar(1, "I")
    shapes = t.tables(5)
    dims = tuple(int(d) for d in shapes[min(stage, len(shapes) - 1)].scalars(0, "Q")) if shapes else ()
    count = 1
    for d in dims:
        count *= d
    return TensorInfo(t.string(0), DTYPE_NAMES.get(dtype, str(dtype)), dims, count * DTYPE_BYTES.get(dtype, 1))


def read_bmodel(path: Path | str) -> BmodelInfo:
    """The networks of the bmodel at `path` (only the header and flatbuffer are read)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64:
            raise BmodelFormatError(f"{path}: too short for a bmodel")
        magic, header_size, fb_size, binary_size = HEADER.unpack_from(head)
        if magic != MAGIC:
            raise BmodelFormatError(f"{path}: not a bmodel (magic {magic:#x})")
        f.seek(header_size)
        buf = f.read(fb_size)
    if len(buf) != fb_size:
        raise BmodelFormatError(f"{path}: truncated")
    try:
        model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
        info = BmodelInfo(path, model.string(3), binary_bytes=binary_size, neuron_bytes=model.scalar(5, "Q"))
        for net in model.tables(4):
            stages = []
            for i, p in enumerate(net.tables(3)):
                coeff = p.table(4)
                blob = coeff.struct_at(2, "QQ") if coeff else None
                ctx_sizes = p.scalars(14, "Q")
                stages.append(
                    StageInfo(
                        weight_start=int(blob[0]) if blob else 0,
                        weight_bytes=int(blob[1]) if blob else 0,
                        ctx_bytes=int(max(ctx_sizes)) if ctx_sizes else int(p.scalar(3, "Q")),
                        io_bytes=int(p.scalar(18, "Q")),
                        inputs=tuple(_tensor(t, i) for t in p.tables(0)),
                        outputs=tuple(_tensor(t, i) for t in p.tables(1)),
                    )
                )
            name = net.string(0)
            info.nets[name] = NetInfo(name, tuple(stages))
    except (struct.error, IndexError) as e:
        raise BmodelFormatError(f"{path}: unreadable network table ({e})") from e
    return info
