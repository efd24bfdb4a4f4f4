"""Which path a job's LoRA stack takes, from costs measured on the device it runs on.

Patching costs once per stack change: one GEMM per targeted layer (Σ out·in·K multiply-adds,
K the stack's summed rank) plus writing the layer. The unfused path costs at every UNet call:
per input position of a targeted layer, K·(in·k + out) multiply-adds. Both are turned into
seconds with rates measured here, on this device: a small timed GEMM of each shape at the
first decision, then the rate each real patch actually achieved (an exponential average), and
for the unfused path the step-time difference jobs actually showed. Formats without a low-rank
form are patched on both paths, so they cancel out of the comparison.

The decision and its reason go into the job's timings, so a slow job can be explained.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from engine.patcher import PATCHED, UNFUSED, StackWork

#: Samplers that evaluate the model twice per step.
_TWO_EVALS = ("Heun", "DPM2", "DPM2 a", "DPM++ SDE", "DPM++ SDE Karras")
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


@dataclass
class CostModel:
    """Device rates in multiply-adds per second, measured lazily and refined by real jobs."""

    device: str = "cpu"
    dtype: Any = None
    patch_rate: float | None = None
    bypass_rate: float | None = None
    #: Seconds per element written (restore + add); memory-bound, measured with the GEMM.
    write_s_per_element: float | None = None
    measurements: dict[str, int] = field(default_factory=lambda: {"patches": 0, "unfused_jobs": 0})
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _calibrate(self) -> None:
        """Time one patch-shaped and one bypass-shaped GEMM on the device (~0.1 s on a CPU)."""
        import torch

        dtype = self.dtype or torch.float32
        out, inner, rank, positions = 640, 640 * 9, 64, 2048
        with torch.inference_mode():
            up = torch.randn(out, rank, device=self.device, dtype=dtype)
            down = torch.randn(rank, inner, device=self.device, dtype=dtype)
            clean = torch.randn(out, inner, device=self.device, dtype=dtype)
            target = torch.empty_like(clean)
            x = torch.randn(positions, inner, device=self.device, dtype=dtype)
            best_patch = best_bypass = float("inf")
            for _ in range(3):
                started = _synced(self.device)
                torch.addmm(clean, up, down, out=target)
                best_patch = min(best_patch, _synced(self.device) - started)
                started = _synced(self.device)
                (x @ down.T) @ up.T
                best_bypass = min(best_bypass, _synced(self.device) - started)
        self.patch_rate = out * inner * rank / best_patch
        self.bypass_rate = positions * rank * (inner + out) / best_bypass
        self.write_s_per_element = 0.0  # the timed addmm already wrote the output

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
            patch_rate, bypass_rate = self.patch_rate, self.bypass_rate
        assert patch_rate is not None and bypass_rate is not None
        patch_s = work.patch_macs / patch_rate
        calls = steps * (2 if sampler in _TWO_EVALS else 1)
        unfused_s = (work.bypass_macs_per_call * calls + work.bypass_macs_once) / bypass_rate
        if unfused_s < patch_s:
            reason = (f"unfused: patching would cost ~{patch_s:.3f} s, running the stack beside the "
                      f"weights ~{unfused_s:.3f} s over {calls} model calls")  # fmt: skip
            return Decision(UNFUSED, reason, patch_s, unfused_s)
        reason = (f"patched: ~{patch_s:.3f} s once, against ~{unfused_s:.3f} s unfused over "
                  f"{calls} model calls")  # fmt: skip
        return Decision(PATCHED, reason, patch_s, unfused_s)

    def record_patch(self, work: StackWork, seconds: float) -> None:
        """A real patch's rate replaces the calibration a little at a time."""
        if seconds <= 0 or work.patch_macs == 0:
            return
        with self._lock:
            measured = work.patch_macs / seconds
            self.patch_rate = measured if self.patch_rate is None else (
                _EMA * measured + (1 - _EMA) * self.patch_rate
            )
            self.measurements["patches"] += 1

    def record_unfused(self, extra_macs: float, extra_seconds: float) -> None:
        """The per-step time unfused jobs showed over plain ones, as a bypass rate."""
        if extra_seconds <= 0 or extra_macs <= 0:
            return
        with self._lock:
            measured = extra_macs / extra_seconds
            self.bypass_rate = measured if self.bypass_rate is None else (
                _EMA * measured + (1 - _EMA) * self.bypass_rate
            )
            self.measurements["unfused_jobs"] += 1

    def snapshot(self) -> dict[str, Any]:
        return {"patch_macs_per_s": self.patch_rate, "bypass_macs_per_s": self.bypass_rate,
                **self.measurements}  # fmt: skip


def _synced(device: str) -> float:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()
