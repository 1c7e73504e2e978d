"""Bounds on untrusted input that need no server: the address table, local paths, log
escaping, JPEG draft decoding, video budgets with their markers, API-key checks."""

from __future__ import annotations

import io
import ipaddress
import os
from pathlib import Path

import pytest
from PIL import Image

from qwen3vl_app.api.request_log import _v
from qwen3vl_app.errors import MediaError, PromptError
from qwen3vl_app.media.pipeline import MediaConfig, resolve_media
from qwen3vl_app.media.sources import SourcePolicy, is_public_ip, load_media
from qwen3vl_app.processing import video as VID
from qwen3vl_app.processing import vision as V
from qwen3vl_app.settings import Settings
from tests.support.media_samples import png_header_only, write_video

# ------------------------------------------------------------------ non-public addresses


@pytest.mark.parametrize(
    "addr",
    [
        "fec0::1",
        "fec0:1234::5",  # deprecated site-local (RFC 3879): counted as public before
        "64:ff9b::7f00:1",
        "64:ff9b::a00:1",  # NAT64 of 127.0.0.1 / 10.0.0.1
        "64:ff9b:1::1",  # local-use NAT64
        "100::1",
        "100:0:0:1::1",  # discard-only, dummy prefix
        "2001:2::1",
        "2001:db8::1",
        "3fff::1",
        "5f00::1",  # benchmarking, documentation, SRv6 SIDs
        "192.0.0.9",
        "192.31.196.1",
        "192.88.99.1",
        "198.18.0.1",
        "198.51.100.1",
        "203.0.113.1",
        "192.0.2.1",
    ],
)
def test_special_purpose_blocks_are_not_public(addr):
    assert is_public_ip(ipaddress.ip_address(addr)) is False


@pytest.mark.parametrize("addr", ["8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808", "2a00:1450::1"])
def test_public_addresses_stay_public(addr):
    assert is_public_ip(ipaddress.ip_address(addr)) is True


# ------------------------------------------------------------------------- local paths


@pytest.fixture
def roots(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "x.png").write_bytes(png_header_only(4, 4))
    (tmp_path / "outside").mkdir()
    (tmp_path / "lnk").symlink_to(tmp_path / "outside")
    return tmp_path, SourcePolicy(allowed_local_roots=(str(allowed),))


def test_symlinks_outside_the_roots_cannot_be_detected(roots):
    """`lnk/../allowed/x` and `nolink/../allowed/x` answer alike: the path is judged as
    text, nothing outside the roots is looked at (was: 400 vs 200)."""
    base, pol = roots
    assert (
        load_media(f"{base}/lnk/../allowed/x.png", pol).data == load_media(f"{base}/nolink/../allowed/x.png", pol).data
    )


@pytest.mark.parametrize(
    "path", ["/proc/self/cwd/x.png", "/proc/1/root/etc/passwd", "/proc/self/exe", "/proc/self/cwd/allowed/x.png"]
)
def test_proc_paths_are_plain_refusals(roots, path, monkeypatch):
    base, pol = roots
    monkeypatch.chdir(base)
    with pytest.raises(MediaError) as e:
        load_media(path, pol)
    assert e.value.status == 400 and e.value.code == "media_path_not_allowed"
    assert str(base) not in e.value.message


def test_file_system_errors_are_4xx(roots, monkeypatch):
    """realpath raising (PermissionError under /proc/<pid>/...) and a read failing after a
    swap (EINVAL) were 500s."""
    base, pol = roots
    real = os.path.realpath

    def denied(p, *a, **kw):
        if "allowed" in str(p) and str(p).endswith("x.png"):
            raise PermissionError(13, "denied")
        return real(p, *a, **kw)

    monkeypatch.setattr(os.path, "realpath", denied)
    with pytest.raises(MediaError) as e:
        load_media(f"{base}/allowed/x.png", pol)
    assert e.value.status == 400
    monkeypatch.setattr(os.path, "realpath", real)

    def einval(fd, n):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "read", einval)
    with pytest.raises(MediaError) as e:
        load_media(f"{base}/allowed/x.png", pol)
    assert e.value.status == 400


def test_symlink_swapped_in_after_the_check_is_refused(roots, monkeypatch):
    base, pol = roots
    import qwen3vl_app.media.sources as S

    real_resolve = S.resolve_local_path

    def resolve_then_swap(path, r):
        out = real_resolve(path, r)
        os.replace(out, out + ".bak")
        os.symlink("/etc/passwd", out)
        return out

    monkeypatch.setattr(S, "resolve_local_path", resolve_then_swap)
    with pytest.raises(MediaError) as e:
        load_media(f"{base}/allowed/x.png", pol)
    assert e.value.status == 400


# ------------------------------------------------------------------------- log values


@pytest.mark.parametrize(
    "raw,want",
    [
        ("/v1/\x1b[31mred", '"/v1/\\u001b[31mred"'),
        ("/a b", '"/a b"'),
        ('/a"b', '"/a\\"b"'),
        ("/a=b", '"/a=b"'),
        ("/a\u202eb", '"/a\\u202eb"'),  # bidi override
        ("/a\x85b", '"/a\\u0085b"'),  # C1 control
        ("/plain/path", "/plain/path"),
        ("", '""'),
    ],
)
def test_log_values_are_escaped(raw, want):
    assert _v(raw) == want


# ----------------------------------------------------------------------- JPEG drafting


def test_large_jpeg_is_decoded_at_reduced_size():
    buf = io.BytesIO()
    Image.new("RGB", (4096, 3072), (40, 90, 200)).save(buf, "JPEG")
    data = buf.getvalue()
    assert V.open_image(data, target=(480, 640)).size == (2048, 1536)  # 1/2: both sides stay >= 2 x 640
    assert V.open_image(data, target=(240, 320)).size == (1024, 768)  # 1/4
    assert V.open_image(data).size == (4096, 3072)
    small = V.image_from_bytes(data, V.ImageBudget(max_pixels=640 * 480))
    assert small.grid_thw[1:] == (30, 40)


# --------------------------------------------------------------------------- video budget


@pytest.mark.parametrize("seconds", [0.4, 9.9, 99.0, 1234.0])
def test_block_marker_tokens_match_the_tokenizer(seconds, tiny_model_dir):
    from qwen3vl_app.prompt.vision import timestamp_text
    from qwen3vl_app.tokenizer import ChatTokenizer

    tok = ChatTokenizer(tiny_model_dir)
    assert VID.block_marker_tokens(seconds) >= len(tok.encode(timestamp_text(seconds))) + 2


def _tokens_with_markers(item):
    return item.num_tokens + sum(VID.block_marker_tokens(t) for t in item.timestamps)


def test_long_video_is_sampled_to_fit(tmp_path):
    """100 s at 320x240 within 1919 tokens: was 400 (2401 > 2047) because the markers
    were left out of the budget."""
    path = write_video(tmp_path / "long.mp4", frames=500, fps=5.0, h=240, w=320)
    budget = VID.VideoBudget(max_tokens=2047 - 128, total_pixels=(2047 - 128) * 1024)
    item = VID.video_from_path(str(path), budget)
    assert _tokens_with_markers(item) <= 2047 - 128
    tight = VID.video_from_path(str(path), VID.VideoBudget(max_tokens=300))
    assert _tokens_with_markers(tight) <= 300 and len(tight.timestamps) < len(item.timestamps)


def test_video_that_cannot_fit_is_refused_before_decoding(tmp_path, monkeypatch):
    path = write_video(tmp_path / "v.mp4", frames=40, fps=10.0)
    monkeypatch.setattr(VID, "read_frames", lambda *a, **k: pytest.fail("decoded a video that cannot fit"))
    with pytest.raises(PromptError) as e:
        VID.video_from_path(str(path), VID.VideoBudget(max_tokens=15))
    assert e.value.code == "invalid_prompt"


# ------------------------------------------------------------------ images priced first


class _Ref:
    def __init__(self, url, kind="image", options=None):
        self.url, self.kind, self.param, self.options = url, kind, "messages[0].content[0]", options or {}


def _uri(blob: bytes) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(blob).decode()


def test_images_over_the_prompt_are_refused_before_decoding(monkeypatch):
    """Four 8192x8192 images: refused from their headers (header-only PNGs: decoding them
    would fail with invalid_image instead)."""
    monkeypatch.setattr(V, "open_image", lambda *a, **k: pytest.fail("decoded before pricing"))
    config = MediaConfig.from_settings(Settings(max_prompt_tokens=2047))
    with pytest.raises(PromptError) as e:
        resolve_media([_Ref(_uri(png_header_only(8192, 8192)))] * 4, config)
    assert e.value.code == "invalid_prompt"


def test_pixels_decoded_per_request_are_bounded():
    from tests.support.media_samples import image_bytes

    config = MediaConfig.from_settings(Settings(max_request_pixels=30_000_000))
    refs = [
        _Ref(_uri(image_bytes("PNG", 1000, 1000)), options={"max_pixels": 65536}),
        _Ref(_uri(png_header_only(6000, 5000)), options={"max_pixels": 65536}),
    ]  # 1 + 30 Mpx
    with pytest.raises(MediaError) as e:
        resolve_media(refs, config)
    assert e.value.status == 413 and e.value.code == "media_too_large"


# ------------------------------------------------------------------------------ API keys


@pytest.mark.parametrize(
    "key,cli,problem",
    [
        (" padded-key-123", True, "whitespace"),
        ("tab-key-12345\t", True, "whitespace"),
        ("ctl\x01key-12345", True, "control"),
        ("comma,key-12345", True, "comma"),
    ],
)
def test_keys_that_cannot_match_are_refused(key, cli, problem):
    from qwen3vl_app.api.auth import check_api_keys

    with pytest.raises(ValueError, match=problem):
        check_api_keys(Settings(api_key=(key,)), [key] if cli else None)


def test_keys_that_can_match_are_accepted(tmp_path: Path):
    from qwen3vl_app.api.auth import check_api_keys

    f = tmp_path / "keys"
    f.write_text("sk=abc=def\nключ-доступа-1\n")
    check_api_keys(
        Settings(api_key=("sk=abc=def", "ключ-доступа-1"), api_key_file=str(f)), ["sk=abc=def", "ключ-доступа-1"]
    )
