import pytest

from qwen3vl_app.media import sniff as S
from tests.support.media_samples import image_bytes, png_header_only, video_bytes


@pytest.mark.parametrize(
    "fmt,expected", [("JPEG", S.JPEG), ("PNG", S.PNG), ("BMP", S.BMP), ("GIF", S.GIF), ("WEBP", S.WEBP)]
)
def test_images_by_magic(fmt, expected):
    assert S.sniff(image_bytes(fmt, 32, 32)[:64]) == expected


@pytest.mark.parametrize(
    "ext,expected",
    [(".mp4", S.MP4), (".mov", S.MOV), (".avi", S.AVI), (".mkv", S.MKV), (".flv", S.FLV), (".wmv", S.WMV)],
)
def test_videos_by_magic(tmp_path, ext, expected):
    assert S.sniff(video_bytes(tmp_path, ext, frames=4, h=32, w=32)[:64]) == expected


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"abc",
        b"hello world, not media",
        b"%PDF-1.7\n...",
        b"PK\x03\x04zipzip",
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00",
        b"RIFF\x00\x00\x00\x00WAVEfmt ",
        b"BM" + b"\x00" * 30,
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    ],
)
def test_not_media(blob):
    assert S.sniff(blob) is None


def test_extension_and_header_do_not_matter():
    # A PNG is a PNG whatever it is called; the sniffer only sees bytes.
    assert S.sniff(png_header_only(10, 10)) == S.PNG
