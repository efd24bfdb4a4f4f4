"""A1111's "stealth PNG info" (and NovelAI's): metadata hidden in the lowest bit of each
pixel's alpha (or red, green, blue) value, so it survives tools that drop text chunks.

Layout: pixels in column order (x outer, y inner); a 15-byte signature (``stealth_pnginfo``,
``stealth_pngcomp`` for alpha, ``stealth_rgbinfo``/``stealth_rgbcomp`` for colour bits), a
32-bit big-endian length in bits, then the payload (gzip for ``…comp``). Only as many pixels
as the signature and the declared length need are turned into bits, in C-speed byte
operations; the payload and its decompression are capped.
"""

from __future__ import annotations

import gzip
import io
import zlib

from engine.recipe.readers.container import ImageMetadata

#: Payloads longer than this are not read (a real one is a few kB).
MAX_PAYLOAD_BYTES = 256 * 1024
#: Images with more pixels are not decoded for this (decoding costs 4 bytes a pixel).
MAX_PIXELS = 40_000_000
_SIGNATURES = {
    b"stealth_pnginfo": ("alpha", False),
    b"stealth_pngcomp": ("alpha", True),
    b"stealth_rgbinfo": ("rgb", False),
    b"stealth_rgbcomp": ("rgb", True),
}
_SIG_BITS = 15 * 8


def _bits(raw: bytes) -> str:
    """Each byte's lowest bit as "0"/"1"."""
    return raw.translate(bytes((48 + (b & 1)) for b in range(256))).decode("ascii")


def _bytes(bits: str) -> bytes:
    usable = len(bits) // 8 * 8
    return int(bits[:usable], 2).to_bytes(usable // 8, "big") if usable else b""


def _column_major(meta: ImageMetadata, mode: str, needed_values: int) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(meta.data)) as image:
        image.load()
        if mode == "alpha":
            if "A" not in image.getbands():
                return b""
            channel = image.getchannel("A")
            return channel.transpose(Image.Transpose.TRANSPOSE).tobytes()[:needed_values]
        rgb = image.convert("RGB").transpose(Image.Transpose.TRANSPOSE)
        return rgb.tobytes()[:needed_values]


def read(meta: ImageMetadata) -> str | None:
    """The hidden text of a PNG, or None."""
    if meta.kind != "png" or meta.png_bit_depth != 8 or not meta.width or not meta.height:
        return None
    if meta.width * meta.height > MAX_PIXELS:
        return None
    try:
        return _read(meta)
    except Exception:  # decoding a hostile image can fail in many ways; it only means "none"
        return None


def _read(meta: ImageMetadata) -> str | None:
    limit = _SIG_BITS + 32 + MAX_PAYLOAD_BYTES * 8
    for mode in ("alpha", "rgb"):
        if mode == "alpha" and meta.png_color_type not in (4, 6):
            continue
        values = _column_major(meta, mode, limit)
        bits = _bits(values)
        signature = _bytes(bits[:_SIG_BITS])
        if signature not in _SIGNATURES or _SIGNATURES[signature][0] != mode:
            continue
        compressed = _SIGNATURES[signature][1]
        length = int(bits[_SIG_BITS : _SIG_BITS + 32] or "0", 2)
        if length <= 0 or length > MAX_PAYLOAD_BYTES * 8:
            return None
        payload = _bytes(bits[_SIG_BITS + 32 : _SIG_BITS + 32 + length])
        if compressed:
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            try:
                payload = inflater.decompress(payload, MAX_PAYLOAD_BYTES * 4)
            except (zlib.error, gzip.BadGzipFile):
                return None
        return payload.decode("utf-8", errors="replace")
    return None
