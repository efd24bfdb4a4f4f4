"""LoRA and LoCon (kohya, LyCORIS, diffusers, PEFT): ΔW = (alpha/r) · up @ down.

Conv layers (LoCon) keep their kernel in ``down`` (r, in, kh, kw) with a 1x1 ``up``; LyCORIS's
Tucker form adds ``lora_mid`` (r, r, kh, kw) between a 1x1 ``down`` and ``up``. The dense ΔW
comes from lycoris-lora's ``functional.locon.diff_weight`` (the reference implementation),
pinned to its plain torch backend so no kernel compiles mid-job. The patcher's fast path
multiplies ``factors()`` itself in one GEMM for a whole stack: the same product, one call.
"""

from __future__ import annotations

from typing import Any

from engine.loras.base import LayerDelta, alpha_scale, compute


class LoraDelta(LayerDelta):
    def __init__(self, tensors: dict[str, Any]) -> None:
        super().__init__(tensors)
        self.down = tensors["down"]
        self.up = tensors["up"]
        self.mid = tensors.get("mid")
        self.rank = int(self.down.shape[0])
        self.scale = alpha_scale(tensors.get("alpha"), self.rank)
        # kohya's plain LoRA already covers 1x1 convs; a kernel (or a Tucker core) is LoCon.
        kernel = tuple(self.down.shape[2:]) if self.mid is None else tuple(self.mid.shape[2:])
        self.format = "locon" if any(k != 1 for k in kernel) else "lora"

    def out_in(self) -> tuple[int, int] | None:
        out = int(self.up.shape[0])
        if self.mid is not None:
            return out, int(self.down.shape[1]) * int(self.mid[0, 0].numel())
        return out, int(self.down[0].numel())

    def dense(self, weight: Any) -> Any:
        from lycoris.functional.locon import diff_weight

        mid = compute(self.mid) if self.mid is not None else None
        delta = diff_weight(compute(self.down), compute(self.up), mid, gamma=self.scale, backend="torch")
        return delta.reshape(weight.shape)

    def dense_bias(self) -> Any | None:
        bias = self.tensors.get("up_bias")
        return compute(bias) if bias is not None else None

    def factors(self) -> tuple[Any, Any] | None:
        if not self.factors_available:  # dense instead: Tucker, or a bias to add
            return None
        up = compute(self.up).reshape(self.up.shape[0], self.rank) * self.scale
        return up, compute(self.down).reshape(self.rank, -1)

    def bypass_down(self) -> Any | None:
        return self.down if self.factors_available else None

    @property
    def factors_available(self) -> bool:
        return self.mid is None and "up_bias" not in self.tensors
