"""Getting the metadata out of an image file, reading bounded amounts whatever the file says.

PNG text chunks are read by walking the chunk list here rather than through Pillow: Pillow
lets text chunks grow to 64 MB in total and only reads those after the image data when the
pixels are decoded; here each chunk, each decompression and the sum of all text have their
own small caps, and pixels are never decoded. JPEG and WebP metadata (EXIF UserComment, JPEG
comments) come from Pillow, which reads them from the file's header segments.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field

#: Files larger than this are not read at all (Discord uploads stop at 10-25 MiB).
MAX_FILE_BYTES = 40 * 1024 * 1024
#: One text chunk after decompression, and all text chunks together.
MAX_CHUNK_TEXT = 1024 * 1024
MAX_TOTAL_TEXT = 4 * 1024 * 1024
MAX_CHUNKS = 10_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_USER_COMMENT = 0x9286
_EXIF_IFD = 0x8769


@dataclass
class ImageMetadata:
    """Text metadata of one image file, keyed like Pillow's ``image.info`` (``exif`` holds
    the decoded EXIF UserComment, ``comment`` a JPEG comment)."""

    kind: str  # "png", "jpeg", "webp", ... or "" when not an image
    data: bytes = b""
    texts: dict[str, str] = field(default_factory=dict)
    width: int = 0
    height: int = 0
    #: PNG colour type (6 = RGBA, 2 = RGB, ...), for the stealth reader.
    png_color_type: int | None = None
    png_bit_depth: int | None = None
    #: Why something could not be read (a truncated file, an oversize chunk), for the member.
    problem: str = ""


def _inflate(data: bytes) -> bytes | None:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_CHUNK_TEXT)
    except zlib.error:
        return None
    return None if inflater.unconsumed_tail else out


def _text_chunk(kind: bytes, body: bytes) -> tuple[str, str] | None:
    key, sep, rest = body.partition(b"\0")
    if not sep or not key:
        return None
    name = key.decode("latin-1")
    if kind == b"tEXt":
        return name, rest.decode("latin-1")
    if kind == b"zTXt":
        if not rest or rest[0] != 0:
            return None
        inflated = _inflate(rest[1:])
        return None if inflated is None else (name, inflated.decode("latin-1"))
    # iTXt: compression flag, method, language tag \0, translated keyword \0, UTF-8 text
    if len(rest) < 2:
        return None
    compressed, method = rest[0], rest[1]
    parts = rest[2:].split(b"\0", 2)
    if len(parts) != 3:
        return None
    text = parts[2]
    if compressed:
        if method != 0:
            return None
        inflated = _inflate(text)
        if inflated is None:
            return None
        text = inflated
    return name, text.decode("utf-8", errors="replace")


def _read_png(data: bytes, meta: ImageMetadata) -> None:
    offset, total, chunks = len(PNG_SIGNATURE), 0, 0
    while offset + 8 <= len(data) and chunks < MAX_CHUNKS:
        chunks += 1
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        start, end = offset + 8, offset + 8 + length
        if end + 4 > len(data):
            meta.problem = "the PNG file is cut off"
            end = min(end, len(data))
        body = data[start:end]
        if kind == b"IHDR" and len(body) >= 13:
            meta.width, meta.height, meta.png_bit_depth, meta.png_color_type = struct.unpack(">IIBB", body[:10])
        elif kind in (b"tEXt", b"zTXt", b"iTXt"):
            if length > MAX_CHUNK_TEXT:
                meta.problem = f"a {length:,}-byte text chunk was skipped (over {MAX_CHUNK_TEXT:,})"
            else:
                pair = _text_chunk(kind, body)
                if pair is not None and total + len(pair[1]) <= MAX_TOTAL_TEXT:
                    total += len(pair[1])
                    meta.texts.setdefault(pair[0], pair[1][:MAX_CHUNK_TEXT])
        elif kind == b"eXIf" and length <= MAX_CHUNK_TEXT:
            comment = _exif_user_comment(body)
            if comment:
                meta.texts.setdefault("exif", comment)
        elif kind == b"IEND":
            break
        offset = end + 4


def decode_user_comment(raw: bytes | str) -> str:
    """EXIF UserComment: an 8-byte character code, then the text (A1111 writes UTF-16 via
    piexif's "UNICODE" code; some tools write UTF-8 or plain ASCII)."""
    if isinstance(raw, str):
        return raw.strip("\0")
    head, body = raw[:8], raw[8:]
    if head.startswith(b"UNICODE"):
        if len(body) >= 2 and body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return body.decode("utf-16", errors="replace").strip("\0")
        # piexif writes big-endian; a NUL at even offsets means big-endian text.
        even_nuls = body[0:200:2].count(0)
        odd_nuls = body[1:200:2].count(0)
        encoding = "utf-16-be" if even_nuls >= odd_nuls else "utf-16-le"
        return body.decode(encoding, errors="replace").strip("\0")
    if head.startswith(b"ASCII") or head == b"\0" * 8:
        return body.decode("utf-8", errors="replace").strip("\0")
    return raw.decode("utf-8", errors="replace").strip("\0")


def _exif_user_comment(exif_bytes: bytes) -> str | None:
    from PIL import Image

    try:
        exif = Image.Exif()
        exif.load(exif_bytes if exif_bytes.startswith(b"Exif") else b"Exif\0\0" + exif_bytes)
        value = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:  # Pillow raises many kinds on malformed EXIF; none may escape a reader
        return None
    if isinstance(value, (bytes, str)) and value:
        return decode_user_comment(value)[:MAX_CHUNK_TEXT]
    return None


def _read_other(data: bytes, meta: ImageMetadata) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            meta.kind = (image.format or "").lower()
            meta.width, meta.height = image.size
            exif = image.info.get("exif")
            comment = image.info.get("comment")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error):
        meta.kind = ""
        return
    except Exception:  # a broken file must read as "no recipe", never as an error
        meta.kind = ""
        return
    if isinstance(exif, bytes):
        text = _exif_user_comment(exif)
        if text:
            meta.texts["exif"] = text
    if isinstance(comment, bytes):
        comment = comment.decode("utf-8", errors="replace")
    if isinstance(comment, str) and comment.strip():
        meta.texts["comment"] = comment[:MAX_CHUNK_TEXT]


def read_container(data: bytes) -> ImageMetadata:
    """The metadata of ``data`` (never raises; ``kind == ""`` when it is no image)."""
    if len(data) > MAX_FILE_BYTES:
        return ImageMetadata("", problem=f"the file is {len(data) / 2**20:.0f} MiB, over the {MAX_FILE_BYTES // 2**20} MiB read limit")
    if data.startswith(PNG_SIGNATURE):
        meta = ImageMetadata("png", data)
        _read_png(data, meta)
        return meta
    meta = ImageMetadata("", data)
    _read_other(data, meta)
    return meta
