import subprocess
import sys

from qwen3vl_app.settings import OPTIONS, Settings, args_to_env, build_arg_parser, mask_key


def test_old_flags_keep_names_and_defaults():
    ns = build_arg_parser().parse_args([])
    env = {}
    args_to_env(ns, env)
    assert env == {}  # nothing given, nothing overridden
    s = Settings.from_env({})
    assert (s.model_dir, s.max_concurrent, s.log_level, s.engine_settings("bm1684x").devid, s.video_ratio, s.port) == (
        "./models/qwen3vl_2b",
        10,
        "INFO",
        0,
        0.5,
        8899,
    )
    assert (s.api_key, s.api_header, s.api_prefix, s.disable_api_auth) == (
        ("abc@123",),
        "Authorization",
        "Bearer",
        False,
    )


def test_short_flags_reach_workers_through_env():
    ns = build_arg_parser().parse_args(
        [
            "-m",
            "/m",
            "-c",
            "3",
            "-l",
            "DEBUG",
            "-d",
            "1",
            "-v",
            "0.25",
            "-p",
            "9000",
            "--api-key",
            "k1",
            "--api-key",
            "k2",
            "--api-header",
            "X-API-Key",
            "--api-prefix",
            "Token",
            "--disable-api-auth",
            "--workers",
            "2",
            "--host",
            "127.0.0.1",
            "--engine",
            "torch",
        ]
    )
    env = {}
    args_to_env(ns, env)
    s = Settings.from_env(env)
    assert (s.model_dir, s.max_concurrent, s.log_level, s.engine_settings("bm1684x").devid, s.video_ratio, s.port) == (
        "/m",
        3,
        "DEBUG",
        1,
        0.25,
        9000,
    )
    assert s.api_keys() == ("k1", "k2") and s.api_header == "X-API-Key" and s.api_prefix == "Token"
    assert s.disable_api_auth and s.workers == 2 and s.host == "127.0.0.1" and s.engine == "torch"


def test_every_option_has_an_env_var():
    assert all(o.env.startswith("QWEN3VL_") for o in OPTIONS)


def test_key_file(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# comment\nkey-one-123456\n\nkey-two-abcdef\n")
    s = Settings.from_env({"QWEN3VL_API_KEY_FILE": str(f), "QWEN3VL_API_KEY": "k0"})
    assert s.api_keys() == ("k0", "key-one-123456", "key-two-abcdef")


def test_mask_key():
    assert mask_key("sk-abcdefghijkl") == "sk-a…ijkl"
    assert mask_key("short") == "*****"


def test_missing_explicit_model_dir_is_a_clear_startup_error(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "qwen3vl_app", "-m", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_help_lists_every_flag():
    r = subprocess.run([sys.executable, "-m", "qwen3vl_app", "--help"], capture_output=True, text=True, timeout=60)
    for opt in OPTIONS:
        for flag in opt.flags:
            assert flag in r.stdout


def test_bad_allowed_media_network_is_a_startup_error(tiny_model_dir):
    r = subprocess.run(
        [sys.executable, "-m", "qwen3vl_app", "-m", str(tiny_model_dir), "--allowed-media-network", "192.168.7.0/33"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "192.168.7.0/33" in r.stderr and "Traceback" not in r.stderr


def test_engine_options_keep_their_flags_and_variables():
    """Each engine's own options (engine/<name>/__init__.py) keep the old flags and
    variables, and land in that engine's settings object only."""
    ns = build_arg_parser().parse_args(["--torch-dtype", "bfloat16", "--torch-max-context", "512", "-d", "3"])
    env = {}
    args_to_env(ns, env)
    assert env == {"QWEN3VL_TORCH_DTYPE": "bfloat16", "QWEN3VL_TORCH_MAX_CONTEXT": "512", "QWEN3VL_DEVID": "3"}
    s = Settings.from_env(env)
    torch, bm = s.engine_settings("torch"), s.engine_settings("bm1684x")
    assert (torch.dtype, torch.max_context, bm.devid) == ("bfloat16", 512, 3)
    assert not hasattr(s, "devid") and not hasattr(s, "torch_dtype")
    assert Settings().engine_settings("torch").dtype == "auto"
