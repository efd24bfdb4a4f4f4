"""The weight patcher: a job's whole LoRA stack in the model's weights, or beside them.

Patched: every targeted weight becomes W' = W + Σ w_i·ΔW_i, computed from a clean copy of W
(kept on the host the first time a layer is touched) and written over the live weight, so a
denoising step costs exactly what it costs without LoRAs. The next, different stack starts
again from the clean copy: weights are restored by copying, never by subtracting (fp16/bf16
round-off would pile up), and a layer the new stack does not touch gets its clean copy back.
All low-rank LoRAs of a layer go in one GEMM (their factors concatenated along the rank
axis), fused with the restore: ``W = addmm(W_clean, U_cat, D_cat)``.

Unfused: low-rank deltas run beside the layer at every step (a forward hook adds
``up(down(x))``), which costs per step but nothing to switch; formats with no low-rank form
(LoHa, LoKr, full, (IA)3, DoRA) are patched on this path too, as they would cost a dense
matmul per step otherwise. :mod:`engine.cost_model` picks the path per job.

The invariants hold on both paths: weight 0 leaves a layer untouched (its entry is dropped,
not multiplied by zero), stack order never changes the floating-point sums (entries are
applied in a canonical order), and the same stack as the previous job is a no-op.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.loras.base import LayerDelta
from engine.loras.keys import DENOISERS, Layer, ModuleIndex
from engine.loras.reader import BoundLora

PATCHED = "patched"
UNFUSED = "unfused"
MODES = (PATCHED, UNFUSED)


@dataclass(frozen=True)
class StackEntry:
    lora: BoundLora
    weight: float


@dataclass
class LayerPlan:
    """What one layer gets from a stack: low-rank factors and dense deltas, with weights."""

    layer: Layer
    low_rank: list[tuple[LayerDelta, float]] = field(default_factory=list)
    dense: list[tuple[LayerDelta, float]] = field(default_factory=list)


@dataclass(frozen=True)
class StackWork:
    """Sizes the cost model reads, in multiply-adds (see :mod:`engine.cost_model`)."""

    #: Σ out·in·K over layers with low-rank deltas: the GEMM that patches them.
    patch_macs: int
    #: Σ positions·K·(in·k + out) over UNet layers: the unfused path's extra work per UNet call.
    bypass_macs_per_call: float
    #: The same over text-encoder layers: paid once per job (the prompt is encoded once).
    bypass_macs_once: float
    #: Layers the stack touches; False when the model's layer positions are not measured yet.
    layers: int
    measured: bool
    #: Layers with low-rank deltas: GEMMs to launch when patching, hooks per call unfused.
    low_rank_layers: int = 0
    #: Elements each path must copy back from clean copies (layers patched now that it will not
    #: rewrite): the unfused path restores every low-rank layer the previous stack patched.
    restore_elements: dict[str, int] = field(default_factory=dict)


def canonical(stack: Sequence[StackEntry]) -> list[StackEntry]:
    """Weight-0 entries out, a file named twice summed, then sorted by content hash."""
    weights: dict[str, float] = {}
    by_sha: dict[str, BoundLora] = {}
    for entry in stack:
        sha = entry.lora.file.sha256
        weights[sha] = weights.get(sha, 0.0) + float(entry.weight)
        by_sha[sha] = entry.lora
    return [StackEntry(by_sha[sha], weights[sha]) for sha in sorted(weights) if weights[sha] != 0.0]


def stack_key(stack: Sequence[StackEntry]) -> tuple[tuple[str, float], ...]:
    return tuple((entry.lora.file.sha256, entry.weight) for entry in canonical(stack))


def plan_layers(stack: Sequence[StackEntry]) -> dict[int, LayerPlan]:
    plans: dict[int, LayerPlan] = {}
    for entry in canonical(stack):
        for layer, delta in entry.lora.targets:
            plan = plans.setdefault(id(layer.module), LayerPlan(layer))
            if delta.factors_available:
                plan.low_rank.append((delta, entry.weight))
            else:
                plan.dense.append((delta, entry.weight))
    return plans


def stack_work(
    stack: Sequence[StackEntry], positions: dict[int, float] | None, patched_now: dict[int, Layer] | None = None
) -> StackWork:
    """The stack's sizes; ``positions``: input positions per call of each layer (by module id);
    ``patched_now``: the layers whose live weight is patched at the moment."""
    macs = 0
    per_call = once = 0.0
    low_rank_layers = 0
    plans = plan_layers(stack)
    restore = {PATCHED: 0, UNFUSED: 0}
    for module_id, layer in (patched_now or {}).items():
        plan = plans.get(module_id)
        elements = layer.module.weight.numel()
        if plan is None:
            restore[PATCHED] += elements
        if plan is None or not plan.dense:
            restore[UNFUSED] += elements
    for module_id, plan in plans.items():
        if not plan.low_rank:
            continue
        low_rank_layers += 1
        weight = plan.layer.module.weight
        out, inner = int(weight.shape[0]), int(weight[0].numel())
        rank = sum(delta.rank for delta, _ in plan.low_rank)
        macs += out * inner * rank
        seen = (positions or {}).get(module_id, 0.0)
        if plan.layer.component in DENOISERS:
            per_call += seen * rank * (inner + out)
        else:
            once += seen * rank * (inner + out)
    return StackWork(macs, per_call, once, len(plans), measured=bool(positions),
                     low_rank_layers=low_rank_layers, restore_elements=restore)  # fmt: skip


class WeightPatcher:
    """One model's LoRA state: clean copies, what is applied now, and the unfused hooks."""

    def __init__(self, pipe: Any, components: Mapping[str, Any] | None = None) -> None:
        self.index = ModuleIndex(pipe, components)
        #: id(module) -> (clean weight, clean bias or None), on the host.
        self._clean: dict[int, tuple[Any, Any]] = {}
        #: id(module) -> layer, for every layer whose live weight differs from its clean copy.
        self._patched: dict[int, Layer] = {}
        self._hooks: dict[int, Any] = {}
        self.applied: tuple[str, tuple[tuple[str, float], ...]] = (PATCHED, ())
        #: Input positions per call of every layer, for the cost model: UNet layers per latent
        #: pixel and image (they scale with the job's size and batch), text encoders per job.
        self._positions: dict[int, float] = {}
        self._probe_hooks: list[Any] = []

    @property
    def patched_layers(self) -> dict[int, Layer]:
        return dict(self._patched)

    @property
    def clean_bytes(self) -> int:
        return sum(w.numel() * w.element_size() + (b.numel() * b.element_size() if b is not None else 0)
                   for w, b in self._clean.values())  # fmt: skip

    def apply(self, stack: Sequence[StackEntry], mode: str = PATCHED) -> dict[str, Any]:
        """Make ``stack`` the model's LoRA state on ``mode``; report what that cost."""
        import torch

        key = (mode, stack_key(stack))
        if not key[1]:
            key = (PATCHED, ())  # no LoRA: both paths are the plain model
        if key == self.applied:
            return {"changed": False, "layers": 0, "seconds": 0.0}
        started = time.perf_counter()
        plans = plan_layers(stack)
        with torch.inference_mode():
            self._remove_hooks()
            for module_id in list(self._patched):
                plan = plans.get(module_id)
                if plan is None or not (plan.dense or (mode == PATCHED and plan.low_rank)):
                    self._restore(module_id)
            written = 0
            for plan in plans.values():
                low_rank = plan.low_rank if mode == PATCHED else []
                if low_rank or plan.dense:
                    self._write(plan.layer, low_rank, plan.dense)
                    written += 1
                if mode == UNFUSED and plan.low_rank:
                    self._hook(plan.layer, plan.low_rank)
        self.applied = key
        return {"changed": True, "layers": written, "hooks": len(self._hooks),
                "seconds": time.perf_counter() - started}  # fmt: skip

    def positions_for(self, latent_pixels: int, unet_batch: int) -> dict[int, float] | None:
        """Each layer's input positions per call at this size, once a job has measured them."""
        if not self._positions:
            return None
        unet_ids = {id(layer.module) for layer in self.index.layers() if layer.component in DENOISERS}
        scale = latent_pixels * unet_batch
        return {m: p * scale if m in unet_ids else p for m, p in self._positions.items()}

    def probe_positions(self, latent_pixels: int, unet_batch: int) -> None:
        """Record, during the next forward of each layer, how many positions it sees.

        Each hook removes itself after one call, so this costs one call of bookkeeping.
        """
        if self._positions or self._probe_hooks:
            return
        import torch

        for layer in self.index.layers():
            module = layer.module
            per = latent_pixels * unet_batch if layer.component in DENOISERS else 1

            def record(mod: Any, args: tuple[Any, ...], per: int = per) -> None:
                x = args[0]
                if isinstance(mod, torch.nn.Conv2d):
                    rows = x.shape[0] * x.shape[-1] * x.shape[-2]
                else:
                    rows = x.numel() // max(1, x.shape[-1])
                self._positions.setdefault(id(mod), rows / per)

            self._probe_hooks.append(module.register_forward_pre_hook(record))

    def end_probe(self) -> None:
        for handle in self._probe_hooks:
            handle.remove()
        self._probe_hooks.clear()

    def restore_all(self) -> None:
        """Back to the plain model (clean weights, no hooks)."""
        self.apply([], PATCHED)

    def drop_hooks_for_move(self) -> None:
        """Before the model changes device: unfused hooks hold tensors on the old one."""
        if self._hooks:
            self.restore_all()

    # -- internals ---------------------------------------------------------------------------

    def _clean_copy(self, layer: Layer) -> tuple[Any, Any]:
        module = layer.module
        copy = self._clean.get(id(module))
        if copy is None:
            weight = module.weight.detach()
            bias = module.bias.detach() if module.bias is not None else None
            pin = weight.is_cuda
            copy = (_host_clone(weight, pin), _host_clone(bias, pin) if bias is not None else None)
            # A clean copy is only ever copied back, never re-derived: it must be exact.
            self._clean[id(module)] = copy
        return copy

    def _restore(self, module_id: int) -> None:
        layer = self._patched.pop(module_id)
        weight, bias = self._clean[module_id]
        layer.module.weight.copy_(weight, non_blocking=True)
        if bias is not None:
            layer.module.bias.copy_(bias, non_blocking=True)

    def _write(self, layer: Layer, low_rank: list[tuple[LayerDelta, float]],
               dense: list[tuple[LayerDelta, float]]) -> None:  # fmt: skip
        import torch

        clean_weight, clean_bias = self._clean_copy(layer)
        live = layer.module.weight
        compute = compute_dtype(live.dtype)
        if low_rank:
            up, down = _concat_factors(low_rank, device=live.device, dtype=compute)
            rows = (live.shape[0], -1)
            if compute == live.dtype and clean_weight.device == live.device and live.is_contiguous():
                torch.addmm(clean_weight.view(rows), up, down, out=live.view(rows))
            else:  # the clean copy is on the host, the weight is channels_last or stored in fp8
                clean = clean_weight.to(live.device, compute, non_blocking=True).view(rows)
                live.copy_(torch.addmm(clean, up, down).view(live.shape))
        else:
            live.copy_(clean_weight, non_blocking=True)
        if dense:
            base = clean_weight.to(device=live.device)
            total = None
            for delta, weight in dense:
                change = delta.dense(base) * weight
                total = change if total is None else total + change
            if compute == live.dtype:
                live.add_(total.to(live.dtype))
            else:  # fp8 has no arithmetic: add in the compute dtype, round once
                live.copy_(live.to(compute) + total.to(compute))
        bias_change = None
        for delta, weight in [*low_rank, *dense]:
            delta_bias = delta.dense_bias()
            if delta_bias is not None:
                change = delta_bias.to(live.device) * weight
                bias_change = change if bias_change is None else bias_change + change
        if clean_bias is not None:  # (a Δbias for a layer without a bias has nowhere to go)
            layer.module.bias.copy_(clean_bias, non_blocking=True)
            if bias_change is not None:
                layer.module.bias.add_(bias_change.to(layer.module.bias.dtype))
        self._patched[id(layer.module)] = layer

    def _hook(self, layer: Layer, low_rank: list[tuple[LayerDelta, float]]) -> None:
        import torch
        import torch.nn.functional as F

        module = layer.module
        weight = module.weight
        compute = compute_dtype(weight.dtype)
        up, _ = _concat_factors(low_rank, device=weight.device, dtype=compute)
        downs = [delta.bypass_down().to(device=weight.device, dtype=compute)  # type: ignore[union-attr]
                 for delta, _ in low_rank]  # fmt: skip
        if isinstance(module, torch.nn.Conv2d):
            down = torch.cat([d.reshape(d.shape[0], *weight.shape[1:]) for d in downs])
            up = up.reshape(*up.shape, 1, 1)
            stride, padding, dilation = module.stride, module.padding, module.dilation

            def extra(x: Any) -> Any:
                return F.conv2d(F.conv2d(x, down, None, stride, padding, dilation), up)
        else:
            down = torch.cat([d.reshape(d.shape[0], -1) for d in downs])

            def extra(x: Any) -> Any:
                return F.linear(F.linear(x, down), up)

        def hook(_module: Any, args: tuple[Any, ...], output: Any) -> Any:
            return output + extra(args[0])

        self._hooks[id(module)] = module.register_forward_hook(hook)

    def _remove_hooks(self) -> None:
        for handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()


def compute_dtype(storage: Any) -> Any:
    """The dtype a LoRA is merged in for a weight stored as ``storage``: itself, except fp8
    storage (FLUX fp8 files), which has no matmul or add and is computed in bf16."""
    import torch

    return torch.bfloat16 if storage in (torch.float8_e4m3fn, torch.float8_e5m2) else storage


def _host_clone(tensor: Any, pin: bool) -> Any:
    copy = tensor.to("cpu", copy=True).contiguous()
    return copy.pin_memory() if pin else copy


def _concat_factors(low_rank: list[tuple[LayerDelta, float]], *, device: Any, dtype: Any) -> tuple[Any, Any]:
    """(U_cat, D_cat) with each LoRA's stack weight folded into its U, in canonical order."""
    import torch

    ups, downs = [], []
    for delta, weight in low_rank:
        up, down = delta.factors()  # type: ignore[misc]
        ups.append(up * weight)
        downs.append(down)
    up = torch.cat(ups, dim=1) if len(ups) > 1 else ups[0]
    down = torch.cat(downs, dim=0) if len(downs) > 1 else downs[0]
    return up.to(device=device, dtype=dtype), down.to(device=device, dtype=dtype)
