"""LyCORIS full/diff: the file stores ΔW itself (``.diff``) and maybe Δbias (``.diff_b``).

There is nothing to compute, so no library call: ΔW is the tensor, reshaped to the weight.
"""

from __future__ import annotations

from typing import Any

from engine.loras.base import LayerDelta, compute


class FullDelta(LayerDelta):
    format = "full"

    def out_in(self) -> tuple[int, int] | None:
        diff = self.tensors["diff"]
        return int(diff.shape[0]), int(diff[0].numel())

    def dense(self, weight: Any) -> Any:
        return compute(self.tensors["diff"]).reshape(weight.shape)

    def dense_bias(self) -> Any | None:
        bias = self.tensors.get("diff_b")
        return compute(bias) if bias is not None else None
