"""What crosses the process boundary between the bot and the engine.

The bot never imports torch, so everything here is plain Python: dataclasses that
serialise to JSON and back. Both sides import this module; the engine's HTTP server
speaks it and :class:`engine.client.EngineClient` reads it.

HTTP API (JSON bodies; errors are ``{"error": {"code": ..., "message": ...}}``). Every
request carries ``Authorization: Bearer <token>`` (:mod:`engine.auth`); without it each route
answers 401, except ``GET /health``, which then answers only ``{"status": "ok"}``:

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

# The recipe model lives in engine.recipe (with its A1111 text, share code and readers); it is
# re-exported here because the recipe is what crosses the process boundary.
from engine.recipe.model import PREDICTION_TYPES as PREDICTION_TYPES
from engine.recipe.model import EmbeddingRef as EmbeddingRef
from engine.recipe.model import LoraRef as LoraRef
from engine.recipe.model import Recipe as Recipe
from engine.recipe.model import RecipeError as RecipeError

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
    #: The request lacked the engine's token (or sent a wrong one): HTTP 401.
    UNAUTHORIZED = "unauthorized"
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
#                        "timings": {"prepare": s, "denoise": s, "total": s}}
#   {"type": "failed",   "job": id, "error": {"code": str, "message": str}}
#   {"type": "heartbeat", "job": id}   # after HEARTBEAT_INTERVAL s without another event; liveness only
# A cancelled job ends with "failed" and code "cancelled".
TERMINAL_EVENTS = frozenset({"done", "failed"})
