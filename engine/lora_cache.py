"""Parsed LoRA files kept in memory, LRU-bounded, and read ahead on another thread.

Reading a file (disk, safetensors, key layout, per-layer format) costs far more than applying
it, and it does not depend on the model: every file is read once, kept under its content
hash until the cache is over its count or byte budget, and shared by every model that uses it.
While one job denoises, the next job's files are read by :meth:`LoraCache.prefetch` on a
background thread, so its switch costs only the apply. Architecture mismatches are refused
from the file's header before anything is read.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from engine.arch import get as arch_spec
from engine.loras.reader import LoraFile, read_lora_file
from engine.protocol import EngineError, ErrorCode, FileInfo, LoraRef, architecture_label
from engine.support import RUNNABLE_ARCHITECTURES

log = logging.getLogger("engine.lora_cache")


@dataclass(frozen=True)
class ResolvedLora:
    """A stack entry after path confinement and header inspection, ready to load."""

    ref: LoraRef
    path: Path
    info: FileInfo


@dataclass
class CachedLora:
    file: str
    sha256: str
    size_bytes: int
    architecture: str
    lora: LoraFile


def check_architecture(lora: ResolvedLora, model_arch: str, model_name: str, model_variant: str | None = None) -> None:
    """Refuse a LoRA made for another architecture, or another size of it (FLUX.2 Klein 4B and
    9B: ``Variant.size``), naming both, before anything is loaded."""
    if lora.info.kind == "checkpoint":
        raise EngineError(
            ErrorCode.INVALID_RECIPE,
            f"'{lora.ref.file}' is a full checkpoint, not a LoRA: use it as the model instead",
        )
    if lora.info.kind in ("embedding", "vae"):
        use = "name it in the prompt" if lora.info.kind == "embedding" else "set it as the model's VAE"
        raise EngineError(
            ErrorCode.INVALID_RECIPE,
            f"'{lora.ref.file}' is a {'textual-inversion embedding' if lora.info.kind == 'embedding' else 'VAE'}, "
            f"not a LoRA: {use} instead",
        )
    lora_arch = lora.info.architecture
    if lora_arch == model_arch:
        spec = arch_spec(model_arch)
        trained, used = (spec.variants.get(v or "") if spec else None for v in (lora.info.variant, model_variant))
        if trained is not None and used is not None and trained.size and used.size and trained.size != used.size:
            raise EngineError(
                ErrorCode.ARCH_MISMATCH,
                f"LoRA '{lora.ref.display_name}' was trained for {trained.label} but the model '{model_name}' is "
                f"{used.label}: a LoRA for one size never fits another; pick a {used.label} LoRA",
            )
    if lora_arch in ("unknown", model_arch):
        return
    lora_label = architecture_label(lora_arch)
    model_label = architecture_label(model_arch)
    advice = f"pick an {model_label} LoRA or an {lora_label} model"
    if lora_arch not in RUNNABLE_ARCHITECTURES:
        advice = f"pick an {model_label} LoRA ({lora_label} models do not run on this engine)"
    raise EngineError(
        ErrorCode.ARCH_MISMATCH,
        f"LoRA '{lora.ref.display_name}' was trained for {lora_label} but the model "
        f"'{model_name}' is {model_label}: {advice}",
    )


def read_for_architecture(architecture: str, path: Path, *, label: str, sha256: str) -> LoraFile:
    """A LoRA file read by its architecture's runtime reader when it has one (FLUX: fused
    layers and every FLUX layout), else the SD reader."""
    from engine.arch import get, runtime_of

    spec = get(architecture)
    reader = getattr(runtime_of(architecture), "read_lora", None) if spec and spec.runnable and spec.runtime else None
    if reader is not None:
        return reader(path, label=label, sha256=sha256)
    return read_lora_file(path, label=label, sha256=sha256)


class LoraCache:
    """sha256 -> parsed file, least recently used first; thread-safe."""

    def __init__(self, *, max_loras: int = 8, max_bytes: int = 2 << 30) -> None:
        if max_loras < 1:
            raise ValueError("the LoRA cache must hold at least one LoRA")
        self.max_loras = max_loras
        self.max_bytes = max_bytes
        self.entries: OrderedDict[str, CachedLora] = OrderedDict()
        #: How many files were read from disk (tests and benchmarks count these).
        self.loads = 0
        self.evictions = 0
        self.prefetched = 0
        self._lock = threading.RLock()
        self._pending: dict[str, Future[CachedLora]] = {}
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lora-prefetch")

    @property
    def total_bytes(self) -> int:
        return sum(entry.size_bytes for entry in list(self.entries.values()))

    def holds(self, sha256: str) -> bool:
        return sha256 in self.entries

    def touch(self, sha256: str) -> bool:
        """Mark a cached file as just used (LRU); False if it is not cached."""
        with self._lock:
            if sha256 not in self.entries:
                return False
            self.entries.move_to_end(sha256)
            return True

    def get(self, lora: ResolvedLora, *, keep: set[str] = frozenset()) -> LoraFile:  # type: ignore[assignment]
        """The parsed file, read now unless cached or being prefetched (then waited for)."""
        sha = lora.info.sha256
        with self._lock:
            entry = self.entries.get(sha)
            if entry is not None:
                self.entries.move_to_end(sha)
                return entry.lora
            pending = self._pending.get(sha)
        if pending is not None:
            try:
                entry = pending.result()
            except EngineError:
                entry = None  # read again below, so the error is this job's own
            if entry is not None:
                with self._lock:
                    self._store(entry, keep | {sha})
                return entry.lora
        entry = self._read(lora)
        with self._lock:
            self._store(entry, keep | {sha})
        return entry.lora

    def prefetch(self, stack: Sequence[ResolvedLora]) -> list[Future[CachedLora]]:
        """Read the files of a coming job in the background; errors wait for that job."""
        futures = []
        with self._lock:
            for lora in stack:
                sha = lora.info.sha256
                if sha in self.entries or sha in self._pending:
                    continue
                future = self._reader.submit(self._read, lora)
                self._pending[sha] = future
                future.add_done_callback(lambda _f, sha=sha: self._prefetched(sha))
                futures.append(future)
        return futures

    def _prefetched(self, sha: str) -> None:
        with self._lock:
            future = self._pending.get(sha)
            if future is None or future.exception() is not None:
                self._pending.pop(sha, None)
                return
            self.prefetched += 1
            self._store(future.result(), {sha})
            self._pending.pop(sha, None)

    def _read(self, lora: ResolvedLora) -> CachedLora:
        parsed = read_for_architecture(lora.info.architecture, lora.path, label=lora.ref.display_name,
                                       sha256=lora.info.sha256)
        with self._lock:
            self.loads += 1
        return CachedLora(
            file=lora.ref.file,
            sha256=lora.info.sha256,
            size_bytes=max(parsed.nbytes, 1),
            architecture=lora.info.architecture,
            lora=parsed,
        )

    def _store(self, entry: CachedLora, keep: set[str]) -> None:
        if entry.sha256 in self.entries:
            self.entries.move_to_end(entry.sha256)
            return
        while self.entries and (
            len(self.entries) + 1 > self.max_loras
            or self.total_bytes + entry.size_bytes > self.max_bytes
        ):
            victim = next((sha for sha in self.entries if sha not in keep), None)
            if victim is None:
                break  # everything cached is in this stack: allow the overshoot for this job
            self.evict(victim)
        self.entries[entry.sha256] = entry

    def evict(self, sha256: str) -> None:
        with self._lock:
            self.entries.pop(sha256)
            self.evictions += 1

    def close(self) -> None:
        self._reader.shutdown(wait=False, cancel_futures=True)
