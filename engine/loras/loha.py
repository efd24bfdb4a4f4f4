"""LyCORIS LoHa: ΔW = (alpha/r) · (w1a @ w1b) ⊙ (w2a @ w2b), with optional Tucker cores.

The product comes from lycoris-lora's ``functional.loha.diff_weight`` (the reference),
torch backend. The Hadamard product is not low-rank, so LoHa always patches the weight.
"""

from __future__ import annotations

from typing import Any

from engine.loras.base import LayerDelta, alpha_scale, compute


class LohaDelta(LayerDelta):
    format = "loha"

    def __init__(self, tensors: dict[str, Any]) -> None:
        super().__init__(tensors)
        self.rank = int(tensors["hada_w1_b"].shape[0])
        self.scale = alpha_scale(tensors.get("alpha"), self.rank)

    def out_in(self) -> tuple[int, int] | None:
        t = self.tensors
        if "hada_t1" in t:  # Tucker: w1a is (r, out), w1b (r, in), t1 (r, r, kh, kw)
            return int(t["hada_w1_a"].shape[1]), int(t["hada_w1_b"].shape[1]) * int(t["hada_t1"][0, 0].numel())
        return int(t["hada_w1_a"].shape[0]), int(t["hada_w1_b"][0].numel())

    def dense(self, weight: Any) -> Any:
        from lycoris.functional.loha import diff_weight

        t = {k: compute(v) for k, v in self.tensors.items() if k.startswith("hada_")}
        if "hada_t1" not in t:  # a flattened conv LoHa: rebuild in 2D, then take the weight's shape
            t["hada_w1_b"] = t["hada_w1_b"].reshape(self.rank, -1)
            t["hada_w2_b"] = t["hada_w2_b"].reshape(t["hada_w2_b"].shape[0], -1)
        delta = diff_weight(
            t["hada_w1_b"], t["hada_w1_a"], t["hada_w2_b"], t["hada_w2_a"],
            t.get("hada_t1"), t.get("hada_t2"), gamma=self.scale, backend="torch",
        )  # fmt: skip
        return delta.reshape(weight.shape)
