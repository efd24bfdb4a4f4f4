"""What crosses the process boundary between the bot and the engine.

The bot never imports torch, so everything here is plain Python: dataclasses that
serialise to JSON and back. Both sides import this module; the engine's HTTP server
speaks it and :class:`engine.client.EngineClient` reads it.

HTTP API (JSON bodies; errors are ``{"error": {"code": ..., "message": ...}}``). Every
request carries ``Authorization: Bearer <token>`` (:mod:`engine.auth`); without it each route
answers 401, except ``GET /health``, which then answers only ``{"status": "ok"}``:

- ``POST /jobs`` ``{"id": str, "recipe": Recipe}`` -> 202 ``JobStatus``; the same id
  again answers the existing job's status and runs nothing twice.
- ``POST /inputs`` (the image's bytes as the body) -> ``{"sha256": str}``: an input image
  for image-to-image jobs, checked (PNG/JPEG/WebP by content, pixel count from the header)
  and held in a bounded cache; a job whose recipe names an ``init_image`` or ``references``
  the engine does not hold is refused at ``POST /jobs``, so send every picture first, with
  every (re)submission.
- ``GET /jobs/{id}`` -> ``JobStatus``.
- ``GET /jobs/{id}/events`` -> ``application/x-ndjson``, one event per line: every past
  event first, then live ones, closing after ``done``/``failed``.
- ``POST /jobs/{id}/cancel`` -> ``JobStatus``; takes effect at the next denoising step.
- ``GET /jobs/{id}/images/{n}`` -> ``image/png`` (with the recipe in its metadata).
- ``GET /health`` -> ``Health``, with ``architectures``: those this engine runs
  (``engine.arch.runnable()``).
- ``POST /inspect`` ``{"kind": "lora"|"model"|"embedding", "path": str}`` -> ``FileInfo``,
  whose ``cannot_run`` says why this engine cannot use the file (None when it can).
- ``GET /files?kind=lora|model|embedding`` -> ``{"files": [FileEntry, ...]}``.
- ``POST /downloads`` ``DownloadRequest`` -> 202 ``DownloadStatus``: the engine fetches a file
  (only from its allowed hosts, only when started with ``--allow-downloads``) into its LoRA
  folder, verifies its sha256 and kind, and moves it into place atomically. The same id, or
  another id for the same destination and sha256, answers the download already under way.
- ``GET /downloads/{id}`` -> ``DownloadStatus``; ``POST /downloads/{id}/cancel`` stops one.

Paths are always relative to the engine's configured model, LoRA or embedding folder (the
embedding folder is the LoRA folder unless the operator configures another).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Literal

from engine import arch as _arch

# The recipe model lives in engine.recipe (with its A1111 text, share code and readers); it is
# re-exported here because the recipe is what crosses the process boundary.
from engine.recipe.model import PREDICTION_TYPES as PREDICTION_TYPES
from engine.recipe.model import EmbeddingRef as EmbeddingRef
from engine.recipe.model import LoraRef as LoraRef
from engine.recipe.model import Recipe as Recipe
from engine.recipe.model import RecipeError as RecipeError

#: Architectures a model or LoRA can be made for (a LoRA only works on its own): the names
#: registered in :mod:`engine.arch`, plus "unknown". Data, not a ``Literal``: adding an
#: architecture is adding its module there, and this follows.
ARCHITECTURES: tuple[str, ...] = _arch.NAMES
#: An architecture's name, one of :data:`ARCHITECTURES` (a newer engine may send one this side
#: does not know yet; :func:`architecture_label` shows it as it is).
Architecture = str
#: The folders a file can be asked about (``POST /inspect``, ``GET /files``).
FileKind = Literal["lora", "model", "embedding"]
#: What a ``.safetensors`` file turned out to be. "lora" is any LoRA-like network file
#: (whatever its maths: see ``FileInfo.lora_format``).
InspectedKind = Literal["lora", "embedding", "checkpoint", "vae", "text_encoder", "unknown"]
#: How people write each architecture's name, for every message that names one.
ARCHITECTURE_LABELS: dict[str, str] = {name: _arch.label(name) for name in ARCHITECTURES}


def architecture_label(architecture: str) -> str:
    """``"sdxl"`` -> ``"SDXL"``; an architecture we do not know by name is shown as it is."""
    return _arch.label(architecture)


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
    #: A download the engine will not start (downloads off, a host it may not fetch from, a
    #: destination another download is writing): HTTP 403/409.
    DOWNLOAD_REFUSED = "download_refused"
    #: A download that failed; its status's ``error.reason`` says why (see DOWNLOAD_REASONS).
    DOWNLOAD_FAILED = "download_failed"
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


#: The largest request body an engine front (``engine.server``, the cluster's ingress) reads:
#: recipes and file requests are small, so a bad client cannot make the engine allocate much.
MAX_BODY_BYTES = 256 * 1024

#: The HTTP status each error code is answered with, the same on every engine front.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_RECIPE: 400,
    ErrorCode.OUTSIDE_FOLDER: 403,
    ErrorCode.UNKNOWN_FILE: 404,
    ErrorCode.UNKNOWN_JOB: 404,
    ErrorCode.CANCELLED: 409,
    ErrorCode.NOT_SAFETENSORS: 415,
    ErrorCode.CORRUPT_FILE: 422,
    ErrorCode.UNSUPPORTED_FORMAT: 422,
    ErrorCode.ARCH_MISMATCH: 422,
    ErrorCode.LORA_NO_MATCH: 422,
    ErrorCode.OUT_OF_MEMORY: 507,
    ErrorCode.ENGINE_UNAVAILABLE: 503,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.DOWNLOAD_REFUSED: 403,
    ErrorCode.DOWNLOAD_FAILED: 502,
    ErrorCode.INTERNAL: 500,
}


def http_status(code: ErrorCode) -> int:
    """The HTTP status an engine answers ``code`` with (500 for a code without one)."""
    return HTTP_STATUS.get(code, 500)


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
    #: AUTOMATIC1111's LoRA hash, first 12 hex of the sha256 of the bytes after the header
    #: (kohya's "addnet hash", what Civitai computes). A file's ``sshs_model_hash`` is not
    #: copied: kohya's equals this, LyCORIS's ("0x" + a hash of other bytes) does not.
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
    #: Checkpoints that are not plain text-to-image ones: "inpainting", "instruct-pix2pix",
    #: "refiner" (``engine.support.VARIANT_TEXT``).
    variant: str | None = None
    #: The engine's verdict (``engine.support``): why it cannot make images with this file or
    #: apply it (naming what the file is, what the engine runs and what to do), or None when it
    #: can. Registration refuses a file that has one. An older engine never sets it.
    cannot_run: str | None = None
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


#: Why a download failed (``DownloadStatus.error["reason"]``), stable for callers and tests.
DOWNLOAD_REASONS = (
    "not_found", "login_required", "token_refused", "redirect_refused", "too_many_redirects",
    "unavailable", "not_a_file", "stalled", "timeout", "truncated", "too_large", "hash_mismatch",
    "pickle", "archive", "corrupt", "wrong_kind", "exists_different", "cancelled",
)  # fmt: skip
DownloadState = Literal["queued", "running", "verifying", "done", "failed"]


@dataclass(frozen=True)
class DownloadRequest:
    """What ``POST /downloads`` takes. ``auth_token`` is sent only to ``url``'s own host (never
    to a host it redirects to) and never logged, stored or echoed."""

    id: str
    url: str
    #: Destination relative to the LoRA folder (a ``.safetensors`` name, folders created).
    path: str
    #: The sha256 the file must have (lower-case hex).
    sha256: str
    #: "lora" or "embedding": what the file must turn out to be once inspected.
    kind: str
    #: The size the source announced (0: unknown) and the most the engine will accept.
    size_bytes: int = 0
    max_bytes: int = 2 * 1024**3
    timeout_s: float = 1800.0
    #: Seconds without a byte after which the download counts as stalled.
    stall_s: float = 60.0
    auth_token: str = field(default="", repr=False)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DownloadRequest:
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        request = cls(**values)
        texts = (request.id, request.url, request.path, request.sha256, request.kind, request.auth_token)
        if not all(isinstance(v, str) for v in texts):
            raise ValueError("id, url, path, sha256, kind and auth_token must be strings")
        numbers = (request.size_bytes, request.max_bytes, request.timeout_s, request.stall_s)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in numbers):
            raise ValueError("size_bytes, max_bytes, timeout_s and stall_s must be non-negative numbers")
        return request


@dataclass(frozen=True)
class DownloadStatus:
    id: str
    state: DownloadState
    path: str
    received: int = 0
    #: Bytes expected (the response's length, else the announced size; 0 when unknown).
    total: int = 0
    #: ``{"code": "download_failed", "reason": ..., "message": ...}`` once failed.
    error: dict[str, str] | None = None
    #: The inspected file once done (its ``path`` is the destination).
    file: FileInfo | None = None
    #: The destination held this very file already: nothing was downloaded.
    reused: bool = False

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["file"] = self.file.to_json() if self.file else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DownloadStatus:
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        if values.get("file"):
            values["file"] = FileInfo.from_json(values["file"])
        return cls(**values)


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
    #: The run's seconds once done, so a bot that restarted meanwhile still learns them.
    seconds: float | None = None

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
