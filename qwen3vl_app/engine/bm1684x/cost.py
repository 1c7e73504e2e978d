"""Device cost of a decode step on the BM1684X: bytes read, launches, copies, memory.

Decode on this chip is bound by memory bandwidth, so a step's cost is modelled as the bytes
its networks read: each launch reads its weights (a gather net such as `embedding_cache`
reads only the rows it returns), its inputs (a `block_cache` net's history K/V inputs are
the KV rows it attends: all rows of the stage that ran) and writes its outputs.  Two
sources feed the same accounting:

- `measured_step`: a bmodel file (`bmodel_file.read_bmodel`) and which networks a step
  launched how often (the native runtime's per-network call counts).  Nothing here names a
  layout: a build that launches `lm_head` once per step instead of once per slot, or adds
  a device sampling head, changes the figures by itself.
- `modelled_step`: the same nets computed from a published model's config (layers, hidden,
  vocab, w4bf16 blocks) for shapes the simulator cannot run, in the layouts `LAYOUTS` names.

Memory: `instance_memory` is weights + KV + activations of one loaded instance, modelled
the same way (docs/operations.md takes its worker counts from it).

Rules: pure arithmetic, no device, no numpy (it runs in `bench/` and at load).  Figures
for shapes the simulator cannot run are estimates and say so; the tok/s figures divide a
bandwidth (41 GB/s effective on an SE7) by bytes per token and ignore launch latency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .bmodel_file import BmodelInfo, StageInfo

SE7_EFFECTIVE_BW = 41e9  # bytes/s a decode step achieves on an SE7 (of ~68 GB/s peak)
W4_GROUP = 64  # published w4bf16 blocks: int4 weights, a bf16 scale + uint8 zero point per 64
LM_HEAD_KINDS = ("bf16", "w8", "w4")


# ----------------------------------------------------------------- accounting


@dataclass
class StepCost:
    """One decode step (all slots of a batch step): what it reads and asks of the host."""

    bytes_read: int = 0  # weights + inputs (KV rows) + outputs written, every launch
    weight_bytes: int = 0
    kv_bytes: int = 0
    launches: int = 0
    syncs: int = 0
    d2d: int = 0
    memsets: int = 0
    host_device_bytes: int = 0  # s2d + d2s
    per_net: dict[str, int] = field(default_factory=dict)  # net -> bytes this step

    def add(self, net: str, weights: int, kv: int, io: int, calls: int = 1) -> None:
        b = (weights + kv + io) * calls
        self.bytes_read += b
        self.weight_bytes += weights * calls
        self.kv_bytes += kv * calls
        self.launches += calls
        self.per_net[net] = self.per_net.get(net, 0) + b


def _is_gather(stage: StageInfo) -> bool:
    """A net whose only inputs are integer ids (embedding lookups): it reads the rows it
    returns, not its whole table."""
    return bool(stage.inputs) and all(t.dtype in ("i32", "u32") for t in stage.inputs)


def _kv_input(name: str) -> bool:
    return name.startswith("history_") or name in ("past_k", "past_v")


def _stage_for(info: BmodelInfo, net: str, kv_length: int) -> StageInfo:
    """The stage of `net` that ran: for multi-stage decode nets the one whose history
    inputs hold `kv_length` rows, else the first."""
    stages = info.nets[net].stages
    if len(stages) > 1 and kv_length:
        for s in stages:
            hist = [t for t in s.inputs if _kv_input(t.name)]
            if hist and len(hist[0].shape) > 1 and hist[0].shape[1] == kv_length:
                return s
    return stages[0]


def net_read(info: BmodelInfo, net: str, kv_length: int = 0) -> tuple[int, int, int]:
    """(weight bytes, KV bytes, other I/O bytes) one launch of `net` moves."""
    s = _stage_for(info, net, kv_length)
    weights = s.output_bytes if _is_gather(s) else s.weight_bytes
    kv = sum(t.nbytes for t in s.inputs if _kv_input(t.name))
    io = s.input_bytes - kv + s.output_bytes
    return weights, kv, io


def measured_step(info: BmodelInfo, calls: dict[str, int], counters: dict[str, int], kv_length: int = 0) -> StepCost:
    """A step's cost from the nets it launched (`calls`: net -> launches this step) and the
    runtime's counters for the step (syncs, d2d copies, memsets, host<->device bytes)."""
    c = StepCost()
    for net, n in sorted(calls.items()):
        if n and net in info.nets:
            w, kv, io = net_read(info, net, kv_length)
            c.add(net, w, kv, io, n)
    c.launches = sum(calls.values())
    c.syncs = int(counters.get("syncs", 0))
    c.d2d = int(counters.get("d2d_copies", 0))
    c.memsets = int(counters.get("memsets", 0))
    c.host_device_bytes = int(counters.get("s2d_bytes", 0)) + int(counters.get("d2s_bytes", 0))
    # a host-issued device-to-device copy reads and writes its bytes
    c.bytes_read += 2 * int(counters.get("d2d_bytes", 0))
    return c


# ----------------------------------------------------------------- published shapes


@dataclass(frozen=True)
class ModelShape:
    """What the cost of a Qwen3-VL build depends on (text_config / vision_config)."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int = 151936
    seq_len: int = 2048  # published builds: SEQLEN 2048, MAX_INPUT_LENGTH 1024
    max_input: int = 1024
    vit_depth: int = 24
    vit_hidden: int = 1024
    vit_intermediate: int = 4096
    vit_patches: int = 2304  # 768x768 pixels / 16x16
    deepstack: int = 3
    weight_bits: int = 4  # w4bf16 blocks

    @property
    def kv_row_bytes(self) -> int:  # one token's K or V in one layer (bf16)
        return self.kv_heads * self.head_dim * 2

    def block_params(self) -> int:
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        attn = self.hidden * q + 2 * self.hidden * kv + q * self.hidden
        return attn + 3 * self.hidden * self.intermediate

    def block_weight_bytes(self) -> int:
        """One decoder layer as the published builds store it: weight-only int-N matmuls
        (per group of 64: a bf16 scale and a uint8 zero point) and bf16 norms."""
        p = self.block_params()
        quant = p * self.weight_bits // 8 + (p // W4_GROUP) * 3
        norms = (2 * self.hidden + 2 * self.head_dim) * 2
        return quant + norms

    def lm_head_bytes(self, kind: str) -> int:
        n = self.vocab * self.hidden
        if kind == "bf16":
            return n * 2
        if kind == "w8":  # int8, a bf16 scale per output row
            return n + self.vocab * 2
        if kind == "w4":  # int4, a bf16 scale + uint8 zero point per group of 64
            return n // 2 + (n // W4_GROUP) * 3
        raise ValueError(f"lm_head kind {kind!r}: one of {LM_HEAD_KINDS}")

    def vit_weight_bytes(self) -> int:
        """bf16 vision encoder (llm_convert compiles it in the half type): blocks plus the
        merger and one merger per deepstack feature (4 x hidden wide in, out = text hidden)."""
        h, i = self.vit_hidden, self.vit_intermediate
        blocks = self.vit_depth * (4 * h * h + 2 * h * i)
        mergers = (1 + self.deepstack) * (16 * h * h + 4 * h * self.hidden)
        return (blocks + mergers) * 2

    def activation_bytes(self) -> int:
        """Largest activation set of one net (the nets share one region): a prefill block
        over MAX_INPUT_LENGTH rows (attention scores per head in f32, MLP intermediates) or
        the vision encoder over its patches.  An estimate: the compiler tiles and reuses."""
        L = self.max_input
        prefill = L * L * self.heads * 4 + 3 * L * self.intermediate * 2 + 6 * L * self.hidden * 2
        P = self.vit_patches
        vit = P * P * 4 * 2 + 3 * P * self.vit_intermediate * 2 + 6 * P * self.vit_hidden * 4
        return max(prefill, vit)


# Published Qwen3-VL configs (text_config / vision_config of the Instruct checkpoints).
SHAPES = {
    "2b": ModelShape("2b", layers=28, hidden=2048, intermediate=6144, heads=16, kv_heads=8, head_dim=128),
    "4b": ModelShape("4b", layers=36, hidden=2560, intermediate=9728, heads=32, kv_heads=8, head_dim=128),
}

# the vendor's published decode speed on an SE7 (docs/operations.md, shared notes)
VENDOR_TOK_S = {"2b": 18.0, "4b": 13.0}

# Batch layouts modelled for the published shapes (the names of scripts/llm_convert_patched.py's
# --kv-layout and of make bench-sim's measured rows).
#   single  batch-1 build (published): embedding_cache, L x block_cache, lm_head
#   concat  the first batch-N workaround: block_cache over N slots, but embedding_cache and
#           lm_head once per slot, a slice + concat that rewrites every slot's SEQLEN K/V
#           rows per layer, and 2 d2d row copies per slot per layer
#   slots   ours (the default batch-N build): a [N, H] lm_head and embedding and each slot's
#           new K/V row written in place: weights read once per step, each slot's KV rows
#           read once, 0 d2d
LAYOUTS = ("single", "concat", "slots")


def modelled_step(shape: ModelShape, batch: int, lm_head: str, layout: str, kv_rows: int | None = None) -> StepCost:
    """One decode step of `batch` slots of `shape` in `layout`, each slot attending
    `kv_rows` rows (default: SEQLEN, all the rows a single-stage build's decode reads)."""
    rows = shape.seq_len if kv_rows is None else kv_rows
    c = StepCost()
    per_slot_nets = 1 if layout == "slots" or batch == 1 else batch
    kv_layer = 2 * rows * shape.kv_row_bytes  # K and V history of one slot, one layer
    states = shape.hidden * 2
    mask = (rows + 1) * 2
    c.add("embedding_cache", shape.hidden * 2 * (batch if per_slot_nets == 1 else 1), 0, 4, per_slot_nets)
    for i in range(shape.layers):
        kv = batch * kv_layer
        if layout == "concat":
            kv *= 3  # the history read by the slice, the concat written, read again by attention
        io = batch * (2 * states + 12 + mask + 2 * shape.kv_row_bytes)
        c.add(f"block_cache_{i}", shape.block_weight_bytes(), kv, io)
    c.add("lm_head", shape.lm_head_bytes(lm_head), 0, states * (batch if per_slot_nets == 1 else 1) + 4, per_slot_nets)
    c.syncs = per_slot_nets if layout != "slots" else 1
    c.d2d = 2 * batch * shape.layers if layout == "concat" else 0
    c.bytes_read += c.d2d * 2 * shape.kv_row_bytes
    # host <-> device per slot: token id, 3 positions, the mask's new element, the token id back
    c.host_device_bytes = batch * (4 + 12 + 2 + 4)
    return c


def tok_per_s(bytes_per_step: int, batch: int, bandwidth: float = SE7_EFFECTIVE_BW) -> float:
    return batch * bandwidth / bytes_per_step if bytes_per_step else 0.0


@dataclass(frozen=True)
class InstanceMemory:
    """Device memory of one loaded instance (bytes)."""

    weights: int
    kv: int
    activations: int
    other: int  # instructions, I/O blocks and the engine's own buffers

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.activations + self.other

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def instance_memory(shape: ModelShape, lm_head: str = "bf16", batch: int = 1) -> InstanceMemory:
    """One instance of a published-shape build: LLM blocks (w4), the bf16 embedding table,
    an untied quantised lm_head next to it (a bf16 head is the embedding table itself), the
    bf16 vit; KV for every slot at SEQLEN; the shared activation region; and ~64 MiB for
    instructions and the engine's buffers (vit inputs, prefill hidden rows)."""
    embedding = shape.vocab * shape.hidden * 2
    head = 0 if lm_head == "bf16" else shape.lm_head_bytes(lm_head)
    weights = shape.layers * shape.block_weight_bytes() + embedding + head + shape.vit_weight_bytes()
    kv = batch * shape.layers * 2 * shape.seq_len * shape.kv_row_bytes
    return InstanceMemory(weights, kv, shape.activation_bytes(), 64 << 20)


def file_memory(info: BmodelInfo) -> InstanceMemory:
    """What a bmodel file asks for at load: weights once, the shared activation region and
    the I/O blocks (which hold the KV cache of io_alone decode nets).  The command streams
    (a few hundred KiB) are left out, so this is a floor: `model_tool --info` prints the
    runtime's own figure."""
    kv = 0
    for n in info.nets.values():
        if n.name.startswith("block_cache"):
            s = n.stages[-1]
            kv += sum(t.nbytes for t in s.inputs if _kv_input(t.name))
    return InstanceMemory(info.weight_bytes, kv, info.ctx_bytes, max(0, info.io_bytes - kv))


def mib(n: int | float) -> str:
    return f"{n / (1 << 20):.0f} MiB"
