"""Which path a job's LoRA stack takes, from costs measured on the device it runs on.

Patching costs once per stack change: per targeted layer one GEMM (out·in·K multiply-adds, K
the stack's summed rank) and a launch, plus copying back the layers the new stack no longer
touches. The unfused path costs at every model call: per input position of a hooked layer
K·(in·k + out) multiply-adds, and per hooked layer the hook's own overhead; switching to it
copies back every layer the previous stack patched. Formats without a low-rank form are
patched on both paths, so they cancel out of the comparison.

Every term is a rate measured here, on this device: a few small timed operations at the
first decision (about 0.1 s), then each prediction is corrected by what real jobs showed (the
measured patch time, and the per-call time unfused jobs took over plain ones), as a running
ratio of measured to predicted. The decision and its reason go into the job's timings, so a
slow job can be explained.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from engine.patcher import PATCHED, UNFUSED, StackWork

#: Samplers that evaluate the model twice per step.
TWO_CALL_SAMPLERS = ("Heun", "DPM2", "DPM2 a")
_EMA = 0.5


@dataclass(frozen=True)
class Decision:
    mode: str
    reason: str
    patch_s: float
    unfused_s: float

    def timings(self) -> dict[str, Any]:
        return {"lora_path": self.mode, "lora_path_reason": self.reason,
                "lora_patch_estimate_s": round(self.patch_s, 4),
                "lora_unfused_estimate_s": round(self.unfused_s, 4)}  # fmt: skip


def model_calls(steps: int, sampler: str) -> int:
    return steps * (2 if sampler in TWO_CALL_SAMPLERS else 1)


@dataclass
class CostModel:
    """Device rates (multiply-adds/s, seconds per layer or element) and learned corrections."""

    device: str = "cpu"
    dtype: Any = None
    patch_rate: float | None = None
    bypass_rate: float | None = None
    patch_layer_s: float = 0.0
    hook_layer_s: float = 0.0
    copy_element_s: float = 0.0
    #: Seconds per layer to switch onto the unfused path (hooks built, restores), learned from
    #: real switches; until one is seen, a patch's per-layer overhead stands in.
    unfused_switch_layer_s: float | None = None
    #: Measured over predicted, for each path (1 until a real job says otherwise).
    patch_correction: float = 1.0
    unfused_correction: float = 1.0
    measurements: dict[str, int] = field(default_factory=lambda: {"patches": 0, "unfused_jobs": 0})
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _calibrate(self) -> None:
        """Time patch-, bypass-, hook- and copy-shaped operations on the device."""
        import torch

        dtype = getattr(torch, self.dtype) if isinstance(self.dtype, str) else (self.dtype or torch.float32)
        device = self.device
        out, inner, rank, positions = 640, 640 * 9, 64, 2048

        def best(work: Any, repeats: int = 3) -> float:
            fastest = float("inf")
            for _ in range(repeats):
                started = _synced(device)
                work()
                fastest = min(fastest, _synced(device) - started)
            return fastest

        with torch.inference_mode():
            up = torch.randn(out, rank, device=device, dtype=dtype)
            down = torch.randn(rank, inner, device=device, dtype=dtype)
            clean = torch.randn(out, inner, device=device, dtype=dtype)
            target = torch.empty_like(clean)
            x = torch.randn(positions, inner, device=device, dtype=dtype)
            self.patch_rate = out * inner * rank / best(lambda: torch.addmm(clean, up, down, out=target))
            self.bypass_rate = positions * rank * (inner + out) / best(lambda: (x @ down.T) @ up.T)
            self.copy_element_s = best(lambda: target.copy_(clean)) / clean.numel()
            small_up, small_down = up[:8, :1].contiguous(), down[:1, :8].contiguous()
            small_clean, small_target = clean[:8, :8].contiguous(), target[:8, :8].contiguous()
            layers = 64
            self.patch_layer_s = best(
                lambda: [torch.addmm(small_clean, small_up, small_down, out=small_target) for _ in range(layers)]
            ) / layers
            plain = torch.nn.Linear(8, 8).to(device=device, dtype=dtype)
            hooked = torch.nn.Linear(8, 8).to(device=device, dtype=dtype)
            d8 = torch.randn(1, 8, device=device, dtype=dtype)
            u8 = torch.randn(8, 1, device=device, dtype=dtype)
            hooked.register_forward_hook(lambda _m, args, out: out + (args[0] @ d8.T) @ u8.T)
            probe = torch.randn(4, 8, device=device, dtype=dtype)
            calls = 64
            extra = best(lambda: [hooked(probe) for _ in range(calls)]) - best(lambda: [plain(probe) for _ in range(calls)])
            self.hook_layer_s = max(extra, 0.0) / calls

    def predict(self, work: StackWork, *, steps: int, sampler: str) -> tuple[float, float]:
        """(seconds to patch, seconds the unfused path adds over the job), corrected."""
        assert self.patch_rate is not None and self.bypass_rate is not None
        restore = work.restore_elements
        patch_s = (work.patch_macs / self.patch_rate + work.low_rank_layers * self.patch_layer_s
                   + restore.get(PATCHED, 0) * self.copy_element_s)  # fmt: skip
        calls = model_calls(steps, sampler)
        per_call = work.bypass_macs_per_call / self.bypass_rate + work.low_rank_layers * self.hook_layer_s
        unfused_s = per_call * calls + work.bypass_macs_once / self.bypass_rate
        switch_layer_s = self.unfused_switch_layer_s
        if switch_layer_s is None:
            switch_layer_s = self.patch_layer_s * self.patch_correction
        switch_s = work.low_rank_layers * switch_layer_s + restore.get(UNFUSED, 0) * self.copy_element_s
        return patch_s * self.patch_correction, unfused_s * self.unfused_correction + switch_s

    def decide(self, work: StackWork, *, steps: int, sampler: str, changed: bool,
               forced: str | None = None) -> Decision:  # fmt: skip
        if forced in (PATCHED, UNFUSED):
            return Decision(forced, f"{forced}: set by the engine's --lora-mode", 0.0, 0.0)
        if work.patch_macs == 0:
            return Decision(PATCHED, "patched: no low-rank layer that could run unfused", 0.0, 0.0)
        if not changed:
            return Decision(PATCHED, "patched: this stack is already in the weights", 0.0, 0.0)
        if not work.measured:
            return Decision(PATCHED, "patched: this model's layer sizes are not measured yet", 0.0, 0.0)
        with self._lock:
            if self.patch_rate is None or self.bypass_rate is None:
                self._calibrate()
            patch_s, unfused_s = self.predict(work, steps=steps, sampler=sampler)
        calls = model_calls(steps, sampler)
        if unfused_s < patch_s:
            reason = (f"unfused: patching would cost ~{patch_s:.3f} s, running the stack beside the "
                      f"weights ~{unfused_s:.3f} s over {calls} model calls")  # fmt: skip
            return Decision(UNFUSED, reason, patch_s, unfused_s)
        reason = (f"patched: ~{patch_s:.3f} s once, against ~{unfused_s:.3f} s unfused over "
                  f"{calls} model calls")  # fmt: skip
        return Decision(PATCHED, reason, patch_s, unfused_s)

    def record_patch(self, predicted_s: float, seconds: float) -> None:
        """A real patch's time against its prediction (before correction)."""
        if seconds <= 0 or predicted_s <= 0:
            return
        with self._lock:
            self.patch_correction = _blend(self.patch_correction, seconds / predicted_s, self.measurements["patches"])
            self.measurements["patches"] += 1

    def record_unfused(self, predicted_s: float, seconds: float) -> None:
        """What an unfused job's model calls took over plain ones, against the prediction."""
        if seconds <= 0 or predicted_s <= 0:
            return
        with self._lock:
            self.unfused_correction = _blend(
                self.unfused_correction, seconds / predicted_s, self.measurements["unfused_jobs"]
            )
            self.measurements["unfused_jobs"] += 1

    def record_unfused_switch(self, layers: int, restore_elements: int, seconds: float) -> None:
        """A real switch onto the unfused path: its per-layer cost beyond the restores."""
        if layers <= 0:
            return
        with self._lock:
            per_layer = max(seconds - restore_elements * self.copy_element_s, 0.0) / layers
            current = self.unfused_switch_layer_s
            self.unfused_switch_layer_s = per_layer if current is None else _EMA * per_layer + (1 - _EMA) * current

    def raw_prediction(self, work: StackWork, *, steps: int, sampler: str) -> tuple[float, float]:
        """The uncorrected prediction, which the corrections are learned against."""
        with self._lock:
            if self.patch_rate is None or self.bypass_rate is None:
                self._calibrate()
            saved = self.patch_correction, self.unfused_correction
            self.patch_correction = self.unfused_correction = 1.0
            try:
                return self.predict(work, steps=steps, sampler=sampler)
            finally:
                self.patch_correction, self.unfused_correction = saved

    def snapshot(self) -> dict[str, Any]:
        return {"patch_macs_per_s": self.patch_rate, "bypass_macs_per_s": self.bypass_rate,
                "patch_layer_s": self.patch_layer_s, "hook_layer_s": self.hook_layer_s,
                "copy_element_s": self.copy_element_s, "patch_correction": self.patch_correction,
                "unfused_switch_layer_s": self.unfused_switch_layer_s,
                "unfused_correction": self.unfused_correction, **self.measurements}  # fmt: skip


def _blend(current: float, measured: float, seen: int) -> float:
    return measured if seen == 0 else _EMA * measured + (1 - _EMA) * current


def _synced(device: str) -> float:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()
