"""Decide what a blob of media is from its first bytes (magic numbers).

The extension, the `Content-Type` header and the MIME type of a `data:` URI are all
chosen by the sender and are ignored: only the bytes decide.
"""

from __future__ import annotations

from dataclasses import dataclass

# Enough bytes for every check below.
SNIFF_BYTES = 64


@dataclass(frozen=True)
class MediaType:
    kind: str  # "image" or "video"
    format: str  # short name: jpeg, png, bmp, gif, webp, mp4, mov, avi, mkv, webm, flv, wmv
    mime: str
    ext: str  # with the dot, for temp files handed to decoders that look at names

    @property
    def is_video(self) -> bool:
        return self.kind == "video"


JPEG = MediaType("image", "jpeg", "image/jpeg", ".jpg")
PNG = MediaType("image", "png", "image/png", ".png")
BMP = MediaType("image", "bmp", "image/bmp", ".bmp")
GIF = MediaType("image", "gif", "image/gif", ".gif")
WEBP = MediaType("image", "webp", "image/webp", ".webp")
MP4 = MediaType("video", "mp4", "video/mp4", ".mp4")
MOV = MediaType("video", "mov", "video/quicktime", ".mov")
AVI = MediaType("video", "avi", "video/x-msvideo", ".avi")
MKV = MediaType("video", "mkv", "video/x-matroska", ".mkv")
WEBM = MediaType("video", "webm", "video/webm", ".webm")
FLV = MediaType("video", "flv", "video/x-flv", ".flv")
WMV = MediaType("video", "wmv", "video/x-ms-wmv", ".wmv")

ALL_TYPES = (JPEG, PNG, BMP, GIF, WEBP, MP4, MOV, AVI, MKV, WEBM, FLV, WMV)

_ASF_GUID = bytes.fromhex("3026B2758E66CF11A6D900AA0062CE6C")
_EBML = b"\x1a\x45\xdf\xa3"
# ISO-BMFF brands that are still pictures (HEIF/AVIF), not video: refused as unsupported.
_IMAGE_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"}
# Classic QuickTime files may start with one of these atoms instead of `ftyp`.
_QT_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
_BMP_DIB_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}


def sniff(head: bytes) -> MediaType | None:
    """Media type of a blob from its first bytes, or None when it is not one we take."""
    if len(head) < 4:
        return None
    if head[:3] == b"\xff\xd8\xff":
        return JPEG
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return PNG
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
        return BMP
    if head[:4] == b"RIFF" and len(head) >= 12:
        form = head[8:12]
        if form == b"WEBP":
            return WEBP
        if form in (b"AVI ", b"AVIX"):
            return AVI
        return None
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_BRANDS:
            return None
        return MOV if brand == b"qt  " else MP4
    if len(head) >= 8 and head[4:8] in _QT_ATOMS:
        return MOV
    if head[:4] == _EBML:
        # DocType is an EBML string inside the header; "webm" or "matroska".
        return WEBM if b"webm" in head[:SNIFF_BYTES] else MKV
    if head[:3] == b"FLV" and head[3] == 1:
        return FLV
    if head[:16] == _ASF_GUID:
        return WMV
    return None


def supported_list() -> str:
    return "images (JPEG, PNG, BMP, GIF, WEBP) and videos (MP4, MOV, AVI, MKV/WEBM, FLV, WMV)"
