"""LyCORIS LoKr: ΔW = scale · kron(w1, w2), each side full or factorised (w_a @ w_b).

scale = alpha / r where r is the factorised side's rank, and 1 when both sides are full
matrices (LyCORIS and ComfyUI agree). The Kronecker rebuild comes from lycoris-lora's
``functional.lokr.diff_weight`` (the reference), torch backend, which applies that rule.
"""

from __future__ import annotations

import math
from typing import Any

from engine.loras.base import LayerDelta, compute


class LokrDelta(LayerDelta):
    format = "lokr"

    def __init__(self, tensors: dict[str, Any]) -> None:
        super().__init__(tensors)
        t = tensors
        if not ("lokr_w1" in t or "lokr_w1_a" in t) or not ("lokr_w2" in t or "lokr_w2_a" in t):
            from engine.protocol import EngineError, ErrorCode

            raise EngineError(ErrorCode.CORRUPT_FILE, "a LoKr layer lacks its lokr_w1 or lokr_w2 factor")
        factorised = t.get("lokr_w1_a") if "lokr_w1_a" in t else t.get("lokr_w2_a")
        self.rank = int(factorised.shape[1]) if factorised is not None else None
        alpha = t.get("alpha")
        # functional.lokr divides gamma by the rank it finds; with both sides full it uses
        # gamma itself as the rank, so any gamma gives scale 1 there.
        self.gamma = float(alpha) if alpha is not None and self.rank is not None else float(self.rank or 1)

    def _side(self, n: int) -> tuple[int, int]:
        t = self.tensors
        if f"lokr_w{n}" in t:
            w = t[f"lokr_w{n}"]
            return int(w.shape[0]), int(math.prod(w.shape[1:]))
        a, b = t[f"lokr_w{n}_a"], t[f"lokr_w{n}_b"]
        if n == 2 and "lokr_t2" in t:  # Tucker: a (r, out), b (r, in), t2 (r, r, kh, kw)
            return int(a.shape[1]), int(b.shape[1]) * int(t["lokr_t2"][0, 0].numel())
        return int(a.shape[0]), int(math.prod(b.shape[1:]))

    def out_in(self) -> tuple[int, int] | None:
        (o1, i1), (o2, i2) = self._side(1), self._side(2)
        return o1 * o2, i1 * i2

    def dense(self, weight: Any) -> Any:
        from lycoris.functional.lokr import diff_weight

        t = {k: compute(v) for k, v in self.tensors.items() if k.startswith("lokr_")}
        delta = diff_weight(
            t.get("lokr_w1"), t.get("lokr_w1_a"), t.get("lokr_w1_b"),
            t.get("lokr_w2"), t.get("lokr_w2_a"), t.get("lokr_w2_b"), t.get("lokr_t2"),
            gamma=self.gamma, backend="torch",
        )  # fmt: skip
        return delta.reshape(weight.shape)
