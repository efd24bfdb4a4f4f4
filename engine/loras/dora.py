"""DoRA (weight-decomposed) on top of any delta: W' = W + s·(m·(W+ΔW)/‖W+ΔW‖ − W).

``m`` is LyCORIS's ``dora_scale`` ((out, 1, …) for a norm per output row, (1, in, …) per
input column) or PEFT's ``lora_magnitude_vector`` (out,). The stack weight s scales the
whole change from W to the decomposed weight, as A1111 (network.py ``apply_weight_decompose``
then ``* multiplier``) and ComfyUI (``weight_decompose``: ``weight += strength * (calc -
weight)``) do; LyCORIS's own merge scales only the magnitude part, which differs for s != 1.
The norm is of the merged weight W+ΔW on both axes, with ComfyUI's and LyCORIS's float eps;
on the input axis this is exactly A1111, ComfyUI and LyCORIS (ComfyUI's output axis divides by
the norm of the original W instead; we follow LyCORIS, the trainer that wrote the file).
Written here: LyCORIS's ``weight_decompose`` scales the other way for s != 1 and PEFT's DoRA
only exists on live layers.
"""

from __future__ import annotations

from typing import Any

from engine.loras.base import LayerDelta, compute


class DoraDelta(LayerDelta):
    def __init__(self, inner: LayerDelta, magnitude: Any) -> None:
        super().__init__({**inner.tensors, "dora_scale": magnitude})
        self.inner = inner
        self.magnitude = magnitude
        self.format = f"dora+{inner.format}"

    def fits(self, weight_shape: tuple[int, ...]) -> bool:
        size = int(self.magnitude.numel())
        return self.inner.fits(weight_shape) and size in (weight_shape[0], weight_shape[1])

    def out_in(self) -> tuple[int, int] | None:
        return self.inner.out_in()

    def dense(self, weight: Any) -> Any:
        import torch

        w = weight.float()
        merged = w + self.inner.dense(weight)
        m = compute(self.magnitude)
        rest = [1] * (w.dim() - 1)
        on_output = m.numel() == w.shape[0] and (m.dim() <= 1 or m.shape[0] == w.shape[0])
        if on_output:
            norm = merged.reshape(w.shape[0], -1).norm(dim=1).reshape(w.shape[0], *rest)
            m = m.reshape(w.shape[0], *rest)
        else:
            norm = merged.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)
            norm = norm.reshape(1, w.shape[1], *rest[1:])
            m = m.reshape(1, w.shape[1], *rest[1:])
        norm = norm + torch.finfo(torch.float32).eps
        return merged * (m / norm) - w
