"""(IA)3: W' = W ⊙ (1 + s·w), the vector scaling output rows (or input columns, ``on_input``).

So ΔW at strength 1 is W ⊙ w, which keeps W' = W + s·ΔW linear in the stack weight s, as
LyCORIS's ``_ia3_weight`` (weight * (w * multiplier + 1)) is. Written here because LyCORIS
only exposes it on its module class, which wraps a live layer; the formula is one line.
"""

from __future__ import annotations

from typing import Any

from engine.loras.base import LayerDelta, compute


class Ia3Delta(LayerDelta):
    format = "ia3"

    def __init__(self, tensors: dict[str, Any]) -> None:
        super().__init__(tensors)
        on_input = tensors.get("on_input")
        self.on_input = bool(on_input is not None and bool(on_input.reshape(-1)[0]))

    def fits(self, weight_shape: tuple[int, ...]) -> bool:
        width = weight_shape[1] if self.on_input else weight_shape[0]
        return int(self.tensors["ia3"].numel()) == width

    def dense(self, weight: Any) -> Any:
        vector = compute(self.tensors["ia3"]).reshape(-1)
        w = weight.float()
        shape = [1] * w.dim()
        axis = 1 if self.on_input else 0
        shape[axis] = vector.numel()
        return w * vector.reshape(shape)
