"""What crosses the process boundary between the bot and the engine.

The bot never imports torch, so everything here is plain Python: dataclasses that
serialise to JSON and back. Both sides import this module; the engine's HTTP server
speaks it and :class:`engine.client.EngineClient` reads it.

HTTP API (JSON bodies; errors are ``{"error": {"code": ..., "message": ...}}``):

- ``POST /jobs`` ``{"id": str, "recipe": Recipe}`` -> 202 ``JobStatus``; the same id
  again answers the existing job's status and runs nothing twice.
- ``GET /jobs/{id}`` -> ``JobStatus``.
- ``GET /jobs/{id}/events`` -> ``application/x-ndjson``, one event per line: every past
  event first, then live ones, closing after ``done``/``failed``.
- ``POST /jobs/{id}/cancel`` -> ``JobStatus``; takes effect at the next denoising step.
- ``GET /jobs/{id}/images/{n}`` -> ``image/png`` (with the recipe in its metadata).
- ``GET /health`` -> ``Health``.
- ``POST /inspect`` ``{"kind": "lora"|"model"|"embedding", "path": str}`` -> ``FileInfo``.
- ``GET /files?kind=lora|model|embedding`` -> ``{"files": [FileEntry, ...]}``.

Paths are always relative to the engine's configured model, LoRA or embedding folder (the
embedding folder is the LoRA folder unless the operator configures another).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Literal

#: Architectures a model or LoRA can be made for. A LoRA only works on its own.
ARCHITECTURES = ("sd15", "sdxl", "sd3", "flux", "unknown")
Architecture = Literal["sd15", "sdxl", "sd3", "flux", "unknown"]
#: The folders a file can be asked about (``POST /inspect``, ``GET /files``).
FileKind = Literal["lora", "model", "embedding"]
#: What a ``.safetensors`` file turned out to be. "lora" is any LoRA-like network file
#: (whatever its maths: see ``FileInfo.lora_format``).
InspectedKind = Literal["lora", "embedding", "checkpoint", "vae", "unknown"]
#: How people write each architecture's name, for every message that names one.
ARCHITECTURE_LABELS: dict[str, str] = {
    "sd15": "SD 1.5",
    "sdxl": "SDXL",
    "sd3": "SD 3",
    "flux": "FLUX",
    "unknown": "an unknown architecture",
}


def architecture_label(architecture: str) -> str:
    """``"sdxl"`` -> ``"SDXL"``; an architecture we do not know by name is shown as it is."""
    return ARCHITECTURE_LABELS.get(architecture, architecture)


class ErrorCode(enum.StrEnum):
    """Stable error codes: the bot turns each into advice, so never rename one."""

    ARCH_MISMATCH = "arch_mismatch"
    LORA_NO_MATCH = "lora_no_match"
    UNKNOWN_FILE = "unknown_file"
    CORRUPT_FILE = "corrupt_file"
    NOT_SAFETENSORS = "not_safetensors"
    OUTSIDE_FOLDER = "outside_folder"
    INVALID_RECIPE = "invalid_recipe"
    UNKNOWN_JOB = "unknown_job"
    #: A valid file in a format this engine cannot apply (a LoRA maths it has no patcher for).
    UNSUPPORTED_FORMAT = "unsupported_format"
    OUT_OF_MEMORY = "out_of_memory"
    CANCELLED = "cancelled"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    INTERNAL = "internal"


class EngineError(Exception):
    """An error with a stable code and a message written for the person who can fix it."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        try:
            self.code = ErrorCode(code)
        except ValueError:
            # A newer engine may send a code this side does not know yet; the message still
            # tells the person what happened, so it must reach them instead of a ValueError.
            self.code = ErrorCode.INTERNAL
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code.value, "message": self.message}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EngineError:
        err = data.get("error", data)
        return cls(err.get("code", ErrorCode.INTERNAL), err.get("message", "unknown error"))


@dataclass(frozen=True)
class LoraRef:
    """One LoRA of a stack. ``file`` is relative to the LoRA folder."""

    file: str
    weight: float
    #: Display name, used in ``<lora:name:w>`` and the A1111 ``Lora hashes``.
    name: str = ""
    #: Expected sha256; when given the engine refuses a file whose content differs.
    sha256: str | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.file.rsplit("/", 1)[-1].removesuffix(".safetensors")


@dataclass(frozen=True)
class EmbeddingRef:
    """A textual-inversion embedding used by ``name`` in the prompt or negative (as in A1111).

    ``file`` is relative to the engine's embedding folder; ``name`` is the word that calls it.
    """

    file: str
    name: str
    #: Expected sha256; when given the engine refuses a file whose content differs.
    sha256: str | None = None


#: ``Recipe.prediction_type`` values: "" reads it from the model file (keys and metadata).
PREDICTION_TYPES = ("", "epsilon", "v_prediction", "v_prediction_ztsnr")


@dataclass(frozen=True)
class Recipe:
    """Everything needed to reproduce an image, bit for bit on the same machine."""

    model: str
    prompt: str
    negative_prompt: str = ""
    loras: tuple[LoraRef, ...] = ()
    sampler: str = "DPM++ 2M Karras"
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = 0
    width: int = 512
    height: int = 512
    #: Number of images; image ``i`` uses seed ``seed + i``.
    count: int = 1
    #: Display name of the model (defaults to the file name).
    model_name: str = ""
    #: A1111's ``CLIP_stop_at_last_layers``: 2 reads the text encoder's penultimate layer.
    clip_skip: int = 1
    #: Textual-inversion embeddings the prompt or negative names.
    embeddings: tuple[EmbeddingRef, ...] = ()
    #: How the model predicts noise: "" = as its file says; otherwise an admin's override.
    prediction_type: str = ""
    #: A VAE ``.safetensors`` file relative to the model folder; empty: the model's own VAE.
    vae: str = ""

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["loras"] = [dataclasses.asdict(lora) for lora in self.loras]
        data["embeddings"] = [dataclasses.asdict(e) for e in self.embeddings]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recipe:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise EngineError(ErrorCode.INVALID_RECIPE, f"unknown recipe fields: {sorted(unknown)}")
        values = dict(data)
        values["loras"] = tuple(LoraRef(**lora) for lora in data.get("loras", ()))
        values["embeddings"] = tuple(EmbeddingRef(**e) for e in data.get("embeddings", ()))
        return cls(**values)


@dataclass(frozen=True)
class FileInfo:
    """What the engine learns from a ``.safetensors`` header, without loading tensors."""

    path: str
    kind: InspectedKind
    architecture: Architecture
    size_bytes: int
    sha256: str
    #: Civitai's AutoV2: the first 10 hex digits of the sha256.
    autov2: str
    #: AUTOMATIC1111's LoRA hash, first 12 hex: the file's ``sshs_model_hash`` where it has
    #: one (as A1111 prefers), else the sha256 of the bytes after the header.
    a1111_hash: str
    rank: int | None = None
    alpha: float | None = None
    has_text_encoder: bool = False
    #: The key layout: "kohya", "diffusers", "diffusers_old" (attention processors), "peft",
    #: "omi", or "unknown".
    key_format: str = "unknown"
    #: A LoRA-like file's maths: "lora", "locon", "loha", "lokr", "full", "ia3", "dora",
    #: combined with "+" ("locon+dora", "loha+dora", "lora+loha") when a file mixes them.
    lora_format: str | None = None
    #: Trigger words suggested by kohya's ``ss_tag_frequency``, most frequent first.
    trigger_words: tuple[str, ...] = ()
    #: kohya's ``ss_output_name``, a good default registry name.
    output_name: str | None = None
    base_model_version: str | None = None
    #: The model family it was made for or belongs to (``engine.families``), "unknown" if unsure.
    family: str = "unknown"
    #: The base checkpoint a LoRA was trained on (kohya ``ss_sd_model_name``/``ss_new_sd_model_hash``).
    base_model_name: str | None = None
    base_model_sha256: str | None = None
    #: kohya's ``ss_clip_skip``: the clip skip a LoRA or embedding was trained with.
    clip_skip: int | None = None
    #: Checkpoints: "epsilon" or "v_prediction" when the file says (keys or model spec).
    prediction_type: str | None = None
    #: Checkpoints trained with zero terminal SNR (a ``ztsnr`` key).
    zero_terminal_snr: bool = False
    #: Embeddings: how many token vectors it stands for; its encoders ("clip_l", "clip_g").
    vectors: int | None = None
    encoders: tuple[str, ...] = ()
    #: LoRAs with embeddings bundled in (OneTrainer ``bundle_emb.<name>.*``): their names.
    bundled_embeddings: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("trigger_words", "encoders", "bundled_embeddings"):
            data[name] = list(getattr(self, name))
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileInfo:
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        for name in ("trigger_words", "encoders", "bundled_embeddings"):
            values[name] = tuple(values.get(name, ()))
        return cls(**values)


@dataclass(frozen=True)
class FileEntry:
    path: str
    size_bytes: int


JobState = Literal["queued", "running", "done", "failed", "cancelled"]


@dataclass(frozen=True)
class JobStatus:
    id: str
    state: JobState
    #: Jobs ahead of this one (0 when it runs or has finished).
    position: int = 0
    step: int = 0
    total_steps: int = 0
    images: int = 0
    error: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobStatus:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


# Events on GET /jobs/{id}/events, one JSON object per line, all carrying "type" and "job":
#   {"type": "queued",   "job": id, "position": int}
#   {"type": "started",  "job": id}
#   {"type": "progress", "job": id, "step": int, "total": int}   # total = steps * count
#   {"type": "done",     "job": id, "images": int, "seconds": float,
#                        "timings": {"prepare": s, "denoise": s, "total": s, ...}}
#     timings may also carry text: "lora_path" ("patched"/"unfused") and "lora_path_reason",
#     "model_source" ("cached"/"host"/"disk"); and counts: "batch_images", "batch_jobs".
#   {"type": "failed",   "job": id, "error": {"code": str, "message": str}}
#   {"type": "heartbeat", "job": id}   # after HEARTBEAT_INTERVAL s without another event; liveness only
# A cancelled job ends with "failed" and code "cancelled".
TERMINAL_EVENTS = frozenset({"done", "failed"})
