"""What a ``.safetensors`` file is, learned from its header without loading a tensor.

The registry shows people what a LoRA is for (architecture, rank, trigger words, hashes) and
refuses files that cannot work before a GPU ever sees them. Reading only the JSON header keeps
that cheap even for a 6 GB checkpoint, and keeps this module free of torch so the bot side and
``python -m engine inspect`` stay fast. The only tensor data ever read are ``.alpha`` scalars
(a few bytes each) and the bytes streamed through sha256.

Layout of the format: 8 bytes little-endian header length ``N``, ``N`` bytes of JSON
(``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}``), then the
data section that the offsets index into.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from engine import arch as _arch
from engine.arch import components as _components
from engine.arch import recognition as _recognition
from engine.arch import unet as _unet
from engine.classify import (
    BUNDLE_PREFIX,
    adapter_configs,
    is_network_key,
    looks_like_checkpoint,
    looks_like_vae,
    most_common,
    prediction_from,
    read_embedding,
    read_network,
    trained_clip_skip,
)
from engine.families import detect_family
from engine.paths import DIFFUSERS_INDEX, PICKLE_SUFFIXES, SAFETENSORS_SUFFIX
from engine.protocol import Architecture, EngineError, ErrorCode, FileInfo
from engine.support import cannot_run

#: Headers of real files are kilobytes to a few megabytes; a larger claim is corruption or
#: an attempt to make us allocate memory.
DEFAULT_MAX_HEADER_BYTES = 100 << 20
HASH_CHUNK_BYTES = 4 << 20

DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
_SCALAR_FORMATS = {"F64": "<d", "F32": "<f", "F16": "<e", "I64": "<q", "I32": "<i"}

# Pickles are zip archives (torch.save) or raw pickle streams (protocol 2-5 start 0x80 0x0N).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = tuple(bytes([0x80, n]) for n in range(2, 6))

_TE_KEY = re.compile(
    r"(^lora_te\d?_|^text_encoder(_2)?\.|cond_stage_model|conditioner\.embedders|"
    r"^text_encoders\.|text_model\.|^clip_[lg]\.)"
)
# Which architecture a file is for is each architecture module's to say (engine.arch): the key
# rules that lived here (DiT blocks and widths, CLIP context widths, SDXL's second encoder)
# moved to engine.arch.recognition, next to the modules whose rules they apply.
UNKNOWN_DIT = _arch.UNKNOWN_DIT
dit_family = _recognition.dit_family


def _corrupt(path: Path, why: str) -> EngineError:
    return EngineError(
        ErrorCode.CORRUPT_FILE,
        f"'{path.name}' is not a valid safetensors file: {why}. Download it again or re-export it.",
    )


def read_header(
    path: Path, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> tuple[dict[str, Any], int]:
    """Parse and validate the JSON header; return it with its length ``N`` (data starts at 8+N).

    Validation is strict because the loader trusts these offsets: every tensor must lie inside
    the data section and have exactly the bytes its dtype and shape need.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(9)
            header_len = struct.unpack("<Q", prefix[:8])[0] if len(prefix) >= 8 else 0
            # A real header starts with "{" right after the length; only when it does not do
            # the pickle signatures count (a 640-byte header also starts with 0x80 0x02).
            plausible = len(prefix) == 9 and prefix[8:9] == b"{" and 8 + header_len <= size
            if not plausible and (prefix.startswith(_ZIP_MAGIC) or prefix[:2] in _PICKLE_MAGIC):
                raise EngineError(
                    ErrorCode.NOT_SAFETENSORS,
                    f"'{path.name}' is a pickle (a PyTorch .ckpt/.pt archive) renamed to "
                    ".safetensors; it was never unpickled. Convert it to real safetensors.",
                )
            if len(prefix) < 8:
                raise _corrupt(path, f"it is only {size} bytes long (truncated)")
            if header_len > max_header_bytes:
                raise _corrupt(
                    path,
                    f"its header claims {header_len} bytes, more than the {max_header_bytes} "
                    "bytes any real file needs",
                )
            if 8 + header_len > size:
                raise _corrupt(
                    path, f"its header claims {header_len} bytes but the file has only {size}"
                )
            handle.seek(8)
            raw = handle.read(header_len)
    except OSError as exc:
        raise EngineError(ErrorCode.UNKNOWN_FILE, f"cannot read '{path.name}': {exc}") from exc
    if len(raw) != header_len:
        raise _corrupt(path, "the file ended inside its header (truncated)")
    try:
        header = json.loads(raw.decode("utf-8").rstrip(" "))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"its header is not valid JSON ({exc})") from exc
    except RecursionError as exc:  # e.g. "[[[[..." nested deeper than any real header
        raise _corrupt(path, "its header nests JSON deeper than any real file") from exc
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    _validate_entries(path, header, data_bytes=size - 8 - header_len)
    return header, header_len


def _validate_entries(path: Path, header: dict[str, Any], *, data_bytes: int) -> None:
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _corrupt(path, "its __metadata__ is not a map of strings")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise _corrupt(path, f"the entry for tensor '{name}' is not an object")
        offsets = entry.get("data_offsets")
        shape = entry.get("shape")
        dtype = entry.get("dtype")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not isinstance(shape, list)
            or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(dtype, str)
        ):
            raise _corrupt(path, f"tensor '{name}' has a malformed dtype/shape/data_offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= data_bytes:
            raise _corrupt(
                path,
                f"tensor '{name}' claims bytes {begin}..{end} but the data section has only "
                f"{data_bytes} (truncated or corrupt)",
            )
        width = DTYPE_BYTES.get(dtype)
        if width is not None and end - begin != math.prod(shape) * width:
            raise _corrupt(
                path,
                f"tensor '{name}' has {end - begin} bytes but {dtype}{shape} needs "
                f"{math.prod(shape) * width}",
            )


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a validated header (a truncated file is named as such)."""
    header, _ = read_header(path)
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


# --- hashing -----------------------------------------------------------------------------

_hash_cache: dict[tuple[str, int, int], tuple[str, str]] = {}
_hash_lock = threading.Lock()
_HASH_CACHE_MAX = 4096


def file_hashes(path: Path, header_len: int) -> tuple[str, str]:
    """Return (sha256 of the file, sha256 of the bytes after the header), streaming once.

    Cached by (path, size, mtime) because hashing a 6 GB checkpoint takes a while and the
    registry asks about the same files again and again; a rewritten file changes its key.
    """
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    whole = hashlib.sha256()
    after_header = hashlib.sha256()
    skip = 8 + header_len
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            whole.update(chunk)
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            after_header.update(chunk[skip:])
            skip = 0
    result = (whole.hexdigest(), after_header.hexdigest())
    with _hash_lock:
        if len(_hash_cache) >= _HASH_CACHE_MAX:
            _hash_cache.pop(next(iter(_hash_cache)))
        _hash_cache[key] = result
    return result


def _read_scalar(path: Path, header_len: int, entry: dict[str, Any]) -> float | None:
    begin, end = entry["data_offsets"]
    dtype = entry["dtype"]
    # Only the dtypes whose width the header check enforced: an unknown dtype's offsets are
    # unchecked and could span gigabytes of a large file.
    if math.prod(entry["shape"]) != 1 or (dtype != "BF16" and dtype not in _SCALAR_FORMATS):
        return None
    with path.open("rb") as handle:
        handle.seek(8 + header_len + begin)
        raw = handle.read(end - begin)
    if dtype == "BF16" and len(raw) == 2:
        return struct.unpack("<f", b"\x00\x00" + raw)[0]
    fmt = _SCALAR_FORMATS.get(dtype)
    if fmt is None or len(raw) != struct.calcsize(fmt):
        return None
    return float(struct.unpack(fmt, raw)[0])


# --- classification ----------------------------------------------------------------------


def checkpoint_variant(tensors: dict[str, dict[str, Any]], architecture: str) -> str | None:
    """What a checkpoint of ``architecture`` is beyond that ("inpainting", "refiner", "dev",
    "schnell", ...): its module's rule (engine.arch); for a UNet no module claims (SD 2.x), its
    input channels still name an inpainting or InstructPix2Pix file."""
    spec = _arch.get(architecture)
    if spec is None:
        return _unet.input_variant(tensors)
    return spec.checkpoint_variant(tensors) if spec.checkpoint_variant is not None else None


def classify(
    tensors: dict[str, dict[str, Any]], metadata: dict[str, str]
) -> tuple[str, Architecture]:
    """(kind, architecture) from key names first, tensor widths second, metadata last.

    Key structure decides where it can, so the tiny test models (whose widths are not the
    real ones) are recognised like real files: SDXL has a second text encoder, the
    ``add_embedding``/``label_emb`` micro-conditioning and transformer depth > 1. A diffusion
    transformer (FLUX, SD 3, ...) is recognised before any of that and is never SD 1.5/SDXL.
    """
    keys = [k for k in tensors if not k.startswith(BUNDLE_PREFIX)]
    embedding = read_embedding(tensors)
    if embedding is not None:
        return "embedding", embedding.architecture
    dit = dit_family({k: tensors[k] for k in keys})
    if any(is_network_key(k) for k in tensors):
        kind = "lora"
    elif looks_like_checkpoint(keys) or dit is not None:
        kind = "checkpoint"
    elif (component := _components.component_of({k: tensors[k].get("shape") or () for k in keys})) is not None:
        return component.role, component.architecture  # a published VAE / text encoder of a DiT
    elif looks_like_vae(keys):
        return "vae", _arch.from_metadata(metadata) or "unknown"
    else:
        kind = "unknown"

    architecture, _family = _recognition.recognise({k: tensors[k] for k in keys}, metadata, dit=dit)
    return kind, architecture


def trigger_words(metadata: dict[str, str], *, limit: int = 20) -> tuple[str, ...]:
    """Tags from kohya's ``ss_tag_frequency`` summed over datasets, most frequent first."""
    raw = metadata.get("ss_tag_frequency")
    if not raw:
        phrase = metadata.get("modelspec.trigger_phrase", "")
        words = [" ".join(w.split()) for w in phrase.split(",")]
        return tuple(dict.fromkeys(w for w in words if w))[:limit]
    try:
        datasets = json.loads(raw)
    except json.JSONDecodeError:
        return ()
    totals: Counter[str] = Counter()
    first_seen: dict[str, str] = {}
    if not isinstance(datasets, dict):
        return ()
    for tags in datasets.values():
        if not isinstance(tags, dict):
            continue
        for tag, count in tags.items():
            clean = " ".join(str(tag).split())
            if not clean or not isinstance(count, int | float):
                continue
            folded = clean.casefold()
            first_seen.setdefault(folded, clean)
            totals[folded] += count
    # Ties keep the order in which tags were first seen. The position comes from a dict built
    # once: a header can hold millions of tags, and looking each one up in a list made this
    # quadratic (8,000 tags took 0.7 s; a 100 MB header would never finish).
    position = {tag: index for index, tag in enumerate(first_seen)}
    ordered = sorted(totals, key=lambda t: (-totals[t], position[t]))
    return tuple(first_seen[t] for t in ordered[:limit])


def _alpha(
    path: Path, header_len: int, tensors: dict[str, dict[str, Any]], metadata: dict[str, str]
) -> float | None:
    values = []
    for name, entry in tensors.items():
        if name.endswith(".alpha"):
            value = _read_scalar(path, header_len, entry)
            if value is not None and math.isfinite(value):
                values.append(round(value, 6))
    if values:
        return float(most_common(values))
    for key in ("ss_network_alpha",):
        try:
            return float(metadata[key])
        except (KeyError, ValueError):
            pass
    # The same reading of diffusers' metadata as the engine's, so both agree on alpha.
    found = [config.get("lora_alpha") for config in adapter_configs(metadata).values()]
    numbers = [float(v) for v in found if isinstance(v, int | float) and not isinstance(v, bool)]
    if numbers:
        return float(most_common(numbers))
    return None


def inspect_file(path: Path, *, relative_to: Path | None = None) -> FileInfo:
    """Describe a safetensors file (or a diffusers pipeline folder) without loading tensors."""
    path = Path(path)
    shown = path.relative_to(relative_to).as_posix() if relative_to else path.name
    if path.is_dir():
        return _inspect_pipeline_folder(path, shown)
    header, header_len = read_header(path)
    metadata: dict[str, str] = header.get("__metadata__", {})
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    kind, architecture = classify(tensors, metadata)
    sha256, after_header = file_hashes(path, header_len)
    network = read_network(tensors) if kind == "lora" else None
    embedding = read_embedding(tensors) if kind == "embedding" else None
    prediction, ztsnr = prediction_from(tensors, metadata) if kind == "checkpoint" else (None, False)
    dit = dit_family(tensors)
    family_text = dit[1] if dit is not None and architecture == "unknown" else None
    unnamed_dit = dit is not None and _arch.get(architecture) is None
    variant = checkpoint_variant(tensors, architecture) if kind == "checkpoint" and not unnamed_dit else None
    spec = _arch.get(architecture)
    if kind == "lora" and spec is not None and spec.lora_variant is not None:
        variant = spec.lora_variant(tensors)  # FLUX.2: the Klein size its widths show
    base_hash = metadata.get("ss_new_sd_model_hash", "").strip().lower() or None
    return FileInfo(
        path=shown,
        kind=kind,  # type: ignore[arg-type]
        architecture=architecture,
        size_bytes=path.stat().st_size,
        sha256=sha256,
        autov2=sha256[:10],
        # Not kohya's ``sshs_model_hash``: it is trusted only where it equals this computed
        # hash (kohya's does), which makes it the same value; LyCORIS writes "0x" + a hash of
        # other bytes, which neither Civitai nor our remix matching would ever find.
        a1111_hash=after_header[:12],
        rank=network.rank if network else None,
        alpha=_alpha(path, header_len, tensors, metadata) if network else None,
        has_text_encoder=any(_TE_KEY.search(k) for k in tensors),
        key_format=network.key_format if network else "unknown",
        lora_format=network.lora_format if network else None,
        trigger_words=trigger_words(metadata),
        output_name=metadata.get("ss_output_name") or None,
        base_model_version=metadata.get("ss_base_model_version") or None,
        family=detect_family(metadata, architecture=architecture, kind=kind, file_name=path.name),
        base_model_name=metadata.get("ss_sd_model_name") or None,
        base_model_sha256=base_hash if base_hash and len(base_hash) == 64 else None,
        clip_skip=trained_clip_skip(metadata),
        prediction_type=prediction,
        zero_terminal_snr=ztsnr,
        vectors=embedding.vectors if embedding else None,
        encoders=embedding.encoders if embedding else (),
        bundled_embeddings=network.bundled_embeddings if network else (),
        variant=variant,
        cannot_run=cannot_run(
            shown, kind, architecture, lora_format=network.lora_format if network else None,
            family_text=family_text, variant=variant,
        ),
        metadata=dict(metadata),
    )


def _inspect_pipeline_folder(folder: Path, shown: str) -> FileInfo:
    """A diffusers folder is a model; its identity hash covers every weight file in it.

    There is no single-file hash for a folder, so sha256 runs over the sorted relative names
    and contents of its ``.safetensors`` files: stable, and it changes when any weight does.
    """
    index_path = folder / DIFFUSERS_INDEX
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EngineError(
            ErrorCode.CORRUPT_FILE,
            f"'{shown}' is a folder without a readable {DIFFUSERS_INDEX}; point at a "
            "diffusers pipeline folder or a single .safetensors file",
        ) from exc
    class_name = str(index.get("_class_name", ""))
    architecture, variant = _arch.from_pipeline_class(class_name)
    # A pipeline class this engine does not know is named as it is (QwenImagePipeline, ...).
    family_text = None if architecture != "unknown" or not class_name else f"the diffusers pipeline `{class_name[:80]}`"
    digest = hashlib.sha256()
    weights_only = hashlib.sha256()
    total = 0
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    denoiser: dict[str, Any] = {}  # the transformer's header, where its variant shows (FLUX)
    for file in files:
        total += file.stat().st_size
        if file.suffix.lower() != SAFETENSORS_SUFFIX:
            continue  # configs, tokenizers; pickles are never read, only sized
        header, header_len = read_header(file)
        if file.parent.name == "transformer":
            denoiser.update({k: v for k, v in header.items() if k != "__metadata__"})
        whole, after = file_hashes(file, header_len)
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0" + whole.encode())
        weights_only.update(after.encode())
    sha256 = digest.hexdigest()
    if variant is None and denoiser:  # FluxPipeline is dev or schnell: its tensors tell which
        variant = checkpoint_variant(denoiser, architecture)
    prediction, ztsnr = _folder_prediction(folder)
    return FileInfo(
        path=shown,
        kind="checkpoint",
        architecture=architecture,
        family=detect_family({}, architecture=architecture, kind="checkpoint", file_name=folder.name),
        prediction_type=prediction,
        zero_terminal_snr=ztsnr,
        size_bytes=total,
        sha256=sha256,
        autov2=sha256[:10],
        a1111_hash=weights_only.hexdigest()[:12],
        has_text_encoder=(folder / "text_encoder").is_dir(),
        variant=variant,
        cannot_run=cannot_run(shown, "checkpoint", architecture, family_text=family_text, variant=variant),
        metadata={"_class_name": class_name},
    )


def _folder_prediction(folder: Path) -> tuple[str | None, bool]:
    """What a diffusers folder's own scheduler config says (v-prediction folders ship it there)."""
    try:
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None, False
    if not isinstance(config, dict):
        return None, False
    prediction = config.get("prediction_type")
    ztsnr = bool(config.get("rescale_betas_zero_snr", False))
    return (prediction if prediction in ("epsilon", "v_prediction") else None), ztsnr


def inspect_path_for_cli(target: str) -> FileInfo:
    """``python -m engine inspect FILE``: local operator use, so no folder confinement."""
    path = Path(os.path.expanduser(target))
    if not path.exists():
        raise EngineError(ErrorCode.UNKNOWN_FILE, f"'{target}' does not exist")
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        raise EngineError(
            ErrorCode.NOT_SAFETENSORS,
            f"'{path.name}' is a pickled format and is never unpickled; convert to .safetensors",
        )
    return inspect_file(path)
