"""`make bmodel ARGS=--use_history_kv`: llm_convert derives the chunk length itself for a
history-KV build and refuses an explicit --max_input_length, which the published options
carry."""

from __future__ import annotations

import importlib.util

from tests.support.live import REPO


def _build_bmodel():
    spec = importlib.util.spec_from_file_location("build_bmodel", REPO / "scripts" / "build_bmodel.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_history_kv_build_drops_the_fixed_input_length():
    b = _build_bmodel()
    plain = b.convert_args(["--do_sample"])
    assert plain[plain.index("--max_input_length") + 1] == "1024" and plain[-1] == "--do_sample"
    for flag in ("--use_history_kv", "--use_block_with_kv"):
        args = b.convert_args([flag, "--chunk_length", "512"])
        assert "--max_input_length" not in args
        assert args[args.index("-s") + 1] == "2048" and args[-3:] == [flag, "--chunk_length", "512"]


def test_batch_build_runs_our_converter_wrapper(tmp_path):
    """`make bmodel ARGS="-b 4"`: tpu-mlir 1.30.2 cannot build a batch-N Qwen3-VL, our wrapper can."""
    b = _build_bmodel()
    assert b.convert_tool(tmp_path, b.convert_args(["--do_sample"])) == [str(tmp_path / "bin" / "llm_convert")]
    assert b.convert_tool(tmp_path, b.convert_args(["-b", "1"])) == [str(tmp_path / "bin" / "llm_convert")]
    for extra in (["-b", "4"], ["--batch", "2", "--do_sample"], ["--batch=8"]):
        tool = b.convert_tool(tmp_path, b.convert_args(extra))
        assert tool[0] == str(tmp_path / "bin" / "python") and tool[1:] == [
            str(REPO / "scripts" / "llm_convert_patched.py"),
            "--convert",
        ], extra
