"""Several loaded models under a device-memory budget, with a host-RAM tier behind it.

A server alternating an SD 1.5 and an SDXL model should never read gigabytes from disk per
job. Models are kept least-recently-used first: when the device budget is full, the oldest
model moves to host RAM (a copy over PCIe instead of a disk read and a rebuild) and comes
back when asked for; when the host budget is full too, the oldest host model is freed. On a
CPU the device *is* host RAM, so there is one tier and its budget. Each model keeps its own
LoRA state (:class:`engine.patcher.WeightPatcher`), so coming back to a model with the stack it
had costs nothing. Like InvokeAI's model cache, sizes are measured from the loaded tensors.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.patcher import WeightPatcher

log = logging.getLogger("engine.model_cache")
DEVICE, HOST = "device", "host"
#: Pipeline attributes holding weights: SD's UNet and CLIPs, a DiT's transformer (FLUX: CLIP-L
#: and T5 as text_encoder and text_encoder_2), the VAE.
_COMPONENTS = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2")


@dataclass
class CachedModel:
    key: str
    path: Path
    #: Path relative to the model folder (what /health reports).
    file: str
    arch: str
    pipe: Any
    patcher: WeightPatcher
    size_bytes: int
    tier: str = DEVICE
    base_scheduler_config: Any = None
    #: sha256 -> BoundLora: the LoRA files matched against this model's layers.
    bound: dict[str, Any] = field(default_factory=dict)
    #: VAE sha256 (or "" for its own) -> AutoencoderKL; the pipeline's current one is ``vae_key``.
    vaes: dict[str, Any] = field(default_factory=dict)
    vae_key: str = ""
    #: Shared components (key -> bytes) this model uses, counted once across the cache.
    shared: dict[str, int] = field(default_factory=dict)


def _lora_components(arch: str, pipe: Any) -> dict[str, Any] | None:
    """The modules a LoRA may patch, as the architecture's runtime names them (None: a loader
    that is not an architecture's, as tests pass, keeps the SD attribute names)."""
    from engine.arch import get, runtime_of

    spec = get(arch)
    if spec is None or not spec.runnable or spec.runtime is None:
        return None
    return runtime_of(arch).lora_components(pipe)


def model_bytes(pipe: Any) -> int:
    """Bytes of the model's own weights; components it shares with other models (FLUX's VAE,
    CLIP-L and T5 files, marked ``_atelier_shared``) are counted by :func:`shared_bytes`."""
    total = 0
    for name in _COMPONENTS:
        module = getattr(pipe, name, None)
        if module is None or getattr(module, "_atelier_shared", None):
            continue
        for tensor in [*module.parameters(), *module.buffers()]:
            total += tensor.numel() * tensor.element_size()
    return total


def shared_bytes(pipe: Any) -> dict[str, int]:
    """Shared component key -> its bytes: counted once however many cached models use it."""
    found: dict[str, int] = {}
    for name in _COMPONENTS:
        module = getattr(pipe, name, None)
        key = getattr(module, "_atelier_shared", None) if module is not None else None
        if key:
            found[key] = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    return found


def _place(arch: str, pipe: Any, device: str) -> None:
    """Move a model as its runtime wants (FLUX keeps CPU text encoders and shared parts put)."""
    from engine.arch import get, runtime_of

    spec = get(arch)
    runtime = runtime_of(arch) if spec is not None and spec.runnable and spec.runtime else None
    place = getattr(runtime, "place", None)
    if place is not None:
        place(pipe, device)
    else:
        pipe.to(device)


def default_budgets(device: str) -> tuple[int, int]:
    """(device, host) bytes: most of the GPU (room left for activations) and half the RAM;
    on a CPU one tier, 60% of the RAM, since activations live there too."""
    import psutil

    ram = psutil.virtual_memory().total
    if str(device).startswith("cuda"):
        import torch

        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        return int(total * 0.7), int(ram * 0.5)
    return int(ram * 0.6), 0


class ModelCache:
    """key (content sha256) -> model, least recently used first; safe to call from threads."""

    def __init__(
        self,
        loader: Callable[[Path], tuple[Any, str]],
        *,
        device: str = "cpu",
        device_budget: int | None = None,
        host_budget: int | None = None,
        two_tiers: bool | None = None,
    ) -> None:
        """``two_tiers``: a host tier behind the device (default: on GPUs only; on a CPU both
        tiers are the same RAM, so moving would copy for nothing)."""
        self.loader = loader
        self.device = device
        auto_device, auto_host = default_budgets(device)
        self.device_budget = auto_device if device_budget is None else device_budget
        self.two_tiers = str(device) != "cpu" if two_tiers is None else two_tiers
        self.host_budget = (auto_host if host_budget is None else host_budget) if self.two_tiers else 0
        self.entries: OrderedDict[str, CachedModel] = OrderedDict()
        self.disk_loads = 0
        self.evictions = 0
        self._lock = threading.RLock()
        self._pending: dict[str, Future[CachedModel]] = {}
        self._loader_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-prefetch")

    # -- reading ------------------------------------------------------------------------------

    def holds(self, key: str) -> bool:
        return key in self.entries

    def used(self, tier: str) -> int:
        entries = [e for e in list(self.entries.values()) if e.tier == tier]
        shared = {key: size for e in entries for key, size in e.shared.items()}
        return sum(e.size_bytes for e in entries) + sum(shared.values())

    def report(self) -> list[dict[str, Any]]:
        return [{"file": e.file, "sha256": e.key, "tier": e.tier, "bytes": e.size_bytes,
                 "shared": sorted(e.shared)} for e in list(self.entries.values())]  # fmt: skip

    # -- getting a model ----------------------------------------------------------------------

    def get(self, path: Path, key: str, file: str, *, estimate_bytes: int = 0) -> tuple[CachedModel, str]:
        """The model on the device, and where it came from: "cached", "host" or "disk"."""
        with self._lock:
            entry = self.entries.get(key)
            pending = self._pending.get(key)
        if entry is None and pending is not None:
            try:
                pending.result()
            except Exception:  # the prefetch failed: load again, so the error is this job's
                pass
            with self._lock:
                entry = self.entries.get(key)
        if entry is not None:
            with self._lock:
                self.entries.move_to_end(key)
                if entry.tier == DEVICE:
                    return entry, "cached"
                self._make_room(DEVICE, entry.size_bytes, keep=key)
                self._to_tier(entry, DEVICE)
            return entry, "host"
        with self._lock:
            # Room first: the old model must not stay beside the new one beyond the budget.
            self._make_room(DEVICE, estimate_bytes, keep=key)
        gc.collect()
        entry = self._load(path, key, file, tier=DEVICE)
        with self._lock:
            self.entries[key] = entry
            self.entries.move_to_end(key)
            self._make_room(DEVICE, 0, keep=key)
        return entry, "disk"

    def prefetch(self, path: Path, key: str, file: str, *, estimate_bytes: int) -> Future[CachedModel] | None:
        """Load a coming job's model in the background when it fits beside what is kept."""
        with self._lock:
            if key in self.entries or key in self._pending:
                return None
            tier = HOST if self.two_tiers else DEVICE
            budget = self.host_budget if self.two_tiers else self.device_budget
            if self.used(tier) + estimate_bytes > budget:
                return None
            future = self._loader_thread.submit(self._prefetch, path, key, file, tier)
            self._pending[key] = future
            return future

    def _prefetch(self, path: Path, key: str, file: str, tier: str) -> CachedModel:
        try:
            entry = self._load(path, key, file, tier=tier)
            with self._lock:
                self.entries[key] = entry
                self.entries.move_to_end(key, last=False)  # not used yet: first out
            return entry
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def _load(self, path: Path, key: str, file: str, *, tier: str) -> CachedModel:
        pipe, arch = self.loader(path)
        _place(arch, pipe, "cpu" if tier == HOST and self.two_tiers else self.device)
        with self._lock:
            self.disk_loads += 1
        return CachedModel(
            key=key, path=path, file=file, arch=arch, pipe=pipe, patcher=WeightPatcher(pipe, _lora_components(arch, pipe)),
            size_bytes=model_bytes(pipe), tier=tier, base_scheduler_config=pipe.scheduler.config,
            shared=shared_bytes(pipe),
        )  # fmt: skip

    # -- making room --------------------------------------------------------------------------

    def _make_room(self, tier: str, incoming: int, *, keep: str) -> None:
        budget = self.device_budget if tier == DEVICE else self.host_budget
        while self.used(tier) + incoming > budget:
            victim = next((e for e in self.entries.values() if e.tier == tier and e.key != keep), None)
            if victim is None:
                return  # only the model in use is left: allow the overshoot
            if tier == DEVICE and self.two_tiers and self.host_budget >= victim.size_bytes:
                self._make_room(HOST, victim.size_bytes, keep=keep)
                self._to_tier(victim, HOST)
            else:
                self.evict(victim.key)

    def _to_tier(self, entry: CachedModel, tier: str) -> None:
        if tier == HOST:
            entry.patcher.drop_hooks_for_move()
            _place(entry.arch, entry.pipe, "cpu")
        else:
            _place(entry.arch, entry.pipe, self.device)
        entry.tier = tier
        if str(self.device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def evict(self, key: str) -> None:
        """Forget a model; its memory is freed once the caller drops its own references."""
        with self._lock:
            entry = self.entries.pop(key, None)
            if entry is None:
                return
            self.evictions += 1
            entry.bound.clear()
            entry.vaes.clear()
            entry.pipe = None
            entry.patcher = None  # type: ignore[assignment]
        gc.collect()
        if str(self.device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def close(self) -> None:
        self._loader_thread.shutdown(wait=False, cancel_futures=True)
