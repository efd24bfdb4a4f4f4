"""LoRAs as named adapters on the loaded pipeline, each file loaded once, LRU-bounded.

Loading a LoRA (read, convert keys, inject layers) costs far more than switching which adapters
are active, so every file is loaded once, under a name derived from its content hash, and
kept until the cache is over its count or byte budget. A job then only calls
``set_adapters`` with its whole stack. Architecture mismatches are refused from the file's
header before anything is injected, and a LoRA that created no layers is an error, never a
silent no-op (diffusers only logs a warning).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.protocol import EngineError, ErrorCode, FileInfo, LoraRef, architecture_label

_QUIET_LOGGERS = ("diffusers", "transformers", "peft")


def adapter_name(sha256: str) -> str:
    """Long and unique: a short name can be a substring of module paths and confuse diffusers."""
    return f"lora_{sha256[:16]}"


@dataclass
class CachedLora:
    adapter: str
    sha256: str
    file: str
    size_bytes: int
    architecture: str


@dataclass(frozen=True)
class ResolvedLora:
    """A stack entry after path confinement and header inspection, ready to load."""

    ref: LoraRef
    path: Path
    info: FileInfo


@contextmanager
def _quiet_loading():
    """diffusers/transformers print per-key load reports for every other adapter; keep logs readable."""
    saved = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # "Already found a `peft_config` attribute": several adapters per model is the design.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def check_architecture(lora: ResolvedLora, model_arch: str, model_name: str) -> None:
    """Refuse a LoRA made for another architecture, naming both, before anything is loaded."""
    if lora.info.kind == "checkpoint":
        raise EngineError(
            ErrorCode.INVALID_RECIPE,
            f"'{lora.ref.file}' is a full checkpoint, not a LoRA: use it as the model instead",
        )
    lora_arch = lora.info.architecture
    if lora_arch in ("unknown", model_arch):
        return
    lora_label = architecture_label(lora_arch)
    model_label = architecture_label(model_arch)
    advice = f"pick an {model_label} LoRA or an {lora_label} model"
    if lora_arch not in ("sd15", "sdxl"):
        advice = f"pick an {model_label} LoRA ({lora_label} models do not run on this engine)"
    raise EngineError(
        ErrorCode.ARCH_MISMATCH,
        f"LoRA '{lora.ref.display_name}' was trained for {lora_label} but the model "
        f"'{model_name}' is {model_label}: {advice}",
    )


class LoraCache:
    """Adapters on one pipeline; ``bind`` a new pipeline and the old entries are forgotten."""

    def __init__(self, *, max_loras: int = 8, max_bytes: int = 2 << 30) -> None:
        if max_loras < 1:
            raise ValueError("the LoRA cache must hold at least one LoRA")
        self.max_loras = max_loras
        self.max_bytes = max_bytes
        self.entries: OrderedDict[str, CachedLora] = OrderedDict()  # sha256 -> entry, LRU first
        #: How many files were read from disk (tests and benchmarks count these).
        self.loads = 0
        self.evictions = 0
        self._pipe: Any = None
        self._lock = threading.Lock()

    @property
    def total_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self.entries.values())

    def bind(self, pipe: Any) -> None:
        """Adapters live inside a pipeline: a different pipeline starts with none."""
        if pipe is not self._pipe:
            self._pipe = pipe
            self.entries.clear()

    def activate(
        self, pipe: Any, stack: Sequence[ResolvedLora], *, model_arch: str, model_name: str
    ) -> list[CachedLora]:
        """Load what is missing, then make exactly ``stack`` active with its weights."""
        with self._lock:
            self.bind(pipe)
            for lora in stack:
                check_architecture(lora, model_arch, model_name)
            needed = {lora.info.sha256 for lora in stack}
            entries = []
            for lora in stack:
                entry = self.entries.get(lora.info.sha256)
                if entry is None:
                    self._make_room(lora.info.size_bytes, keep=needed)
                    entry = self._load(pipe, lora, model_arch, model_name)
                    self.entries[entry.sha256] = entry
                self.entries.move_to_end(entry.sha256)
                entries.append(entry)
            self._set_active(pipe, stack)
            return entries

    def _set_active(self, pipe: Any, stack: Sequence[ResolvedLora]) -> None:
        if not stack:
            if self.entries:
                pipe.disable_lora()
            return
        # Sum the weights of a LoRA named twice; sort so stack order cannot change the floating
        # point summation order inside PEFT (a stack and its reverse give the same bits).
        weights: dict[str, float] = {}
        for lora in stack:
            name = adapter_name(lora.info.sha256)
            weights[name] = weights.get(name, 0.0) + float(lora.ref.weight)
        names = sorted(weights)
        with _quiet_loading():
            pipe.enable_lora()
            pipe.set_adapters(names, adapter_weights=[weights[n] for n in names])

    def _make_room(self, incoming_bytes: int, *, keep: set[str]) -> None:
        while self.entries and (
            len(self.entries) + 1 > self.max_loras or self.total_bytes + incoming_bytes > self.max_bytes
        ):
            victim = next((sha for sha in self.entries if sha not in keep), None)
            if victim is None:
                break  # everything cached is in this stack: allow the overshoot for this job
            self.evict(victim)

    def evict(self, sha256: str) -> None:
        entry = self.entries.pop(sha256)
        if self._pipe is not None:
            with _quiet_loading():
                self._pipe.delete_adapters(entry.adapter)
        self.evictions += 1

    def _load(self, pipe: Any, lora: ResolvedLora, model_arch: str, model_name: str) -> CachedLora:
        name = adapter_name(lora.info.sha256)
        label = lora.ref.display_name
        self.loads += 1
        try:
            with _quiet_loading():
                pipe.load_lora_weights(str(lora.path), adapter_name=name)
        except RuntimeError as exc:
            self._drop_partial(pipe, name)
            if "size mismatch" in str(exc):
                raise EngineError(
                    ErrorCode.ARCH_MISMATCH,
                    f"LoRA '{label}' does not fit the model '{model_name}' "
                    f"({architecture_label(model_arch)}): its layer shapes differ, so it "
                    f"was trained for another architecture; pick an {architecture_label(model_arch)} LoRA",
                ) from exc
            if "out of memory" in str(exc).lower():
                raise EngineError(ErrorCode.OUT_OF_MEMORY, f"out of memory loading LoRA '{label}'") from exc
            raise EngineError(ErrorCode.CORRUPT_FILE, f"could not load LoRA '{label}': {exc}") from exc
        except (ValueError, KeyError) as exc:
            self._drop_partial(pipe, name)
            text = str(exc)
            if "not found in the base model" in text or "Target modules" in text:
                raise self._no_match(label, model_name, model_arch) from exc
            raise EngineError(
                ErrorCode.CORRUPT_FILE,
                f"LoRA '{label}' could not be read as a LoRA ({type(exc).__name__}: {text[:300]})",
            ) from exc
        created = [name in adapters for adapters in pipe.get_list_adapters().values()]
        if not any(created):
            raise self._no_match(label, model_name, model_arch)
        return CachedLora(
            adapter=name,
            sha256=lora.info.sha256,
            file=lora.ref.file,
            size_bytes=lora.info.size_bytes,
            architecture=lora.info.architecture,
        )

    @staticmethod
    def _no_match(label: str, model_name: str, model_arch: str) -> EngineError:
        return EngineError(
            ErrorCode.LORA_NO_MATCH,
            f"LoRA '{label}' has no layers matching model '{model_name}' "
            f"({architecture_label(model_arch)}): it was made for a different model family "
            "or uses an unsupported key format; check what it was trained for",
        )

    @staticmethod
    def _drop_partial(pipe: Any, name: str) -> None:
        try:
            if any(name in adapters for adapters in pipe.get_list_adapters().values()):
                with _quiet_loading():
                    pipe.delete_adapters(name)
        except Exception:
            pass
