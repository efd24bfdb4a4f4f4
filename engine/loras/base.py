"""What every format's per-layer delta offers the weight patcher."""

from __future__ import annotations

import math
from typing import Any

from engine.protocol import EngineError, ErrorCode

#: Every ΔW is computed in float32 whatever the file or model dtype, as A1111 and ComfyUI do;
#: the patcher casts once when writing into the weight.
COMPUTE_DTYPE_NAME = "float32"


def compute(tensor: Any) -> Any:
    import torch

    return tensor.to(torch.float32)


def alpha_scale(alpha: Any, rank: int) -> float:
    """kohya/LyCORIS scale alpha/rank; no alpha in the file means alpha = rank (scale 1)."""
    if alpha is None:
        return 1.0
    value = float(alpha)
    if not math.isfinite(value):
        raise EngineError(ErrorCode.CORRUPT_FILE, f"a LoRA alpha is {value}: the file is damaged")
    return value / rank


class LayerDelta:
    """One layer's change at strength 1. Subclasses set ``format`` and implement ``dense``."""

    format = "unknown"
    #: Roles this delta read from the file (for the byte count and messages).
    tensors: dict[str, Any]

    def __init__(self, tensors: dict[str, Any]) -> None:
        self.tensors = tensors

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values() if hasattr(t, "numel"))

    def out_in(self) -> tuple[int, int] | None:
        """(rows, columns) of the flattened ΔW, when the factors tell it; None if unknown."""
        return None

    def fits(self, weight_shape: tuple[int, ...]) -> bool:
        """Whether this delta can apply to a weight of ``weight_shape`` (else: another model)."""
        expected = self.out_in()
        if expected is None:
            return True
        return expected == (weight_shape[0], math.prod(weight_shape[1:]))

    def dense(self, weight: Any) -> Any:
        """ΔW at strength 1 in ``weight``'s shape, float32; ``weight`` is the clean original."""
        raise NotImplementedError

    def dense_bias(self) -> Any | None:
        """Δbias at strength 1, or None when the format does not change the bias."""
        return None

    #: Whether ``factors()`` gives (U, D); checked often, so without building them.
    factors_available = False
    #: The rank of ``factors()`` when available.
    rank = 0

    def factors(self) -> tuple[Any, Any] | None:
        """(U·scale of shape (out, r), D of shape (r, in·k·k)) with ΔW = U @ D, if low-rank."""
        return None

    def bypass_down(self) -> Any | None:
        """The down factor in the layer's own op shape (conv kernel or linear), for the
        unfused path; None when the delta has no cheap per-step form."""
        return None
