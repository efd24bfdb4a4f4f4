"""What a checkpoint predicts, and the scheduler settings that go with it.

Most SD 1.5 and SDXL checkpoints predict noise (epsilon). v-prediction models (NoobAI-XL
v-pred, some SD 1.5/2 fine-tunes) predict velocity, and many are also trained with zero
terminal SNR; run with an epsilon scheduler they give washed-out or burnt images, silently.
The file says which it is (``v_pred``/``ztsnr`` marker keys, ``modelspec.prediction_type``, a
diffusers folder's own scheduler config), and an admin may override it per model. The settings
are diffusers' for such models: ``prediction_type="v_prediction"``, and for zero terminal SNR
``rescale_betas_zero_snr=True`` with ``timestep_spacing="trailing"`` (so sampling starts at the
last timestep). Torch-free.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from engine.protocol import PREDICTION_TYPES, EngineError, ErrorCode, FileInfo

PREDICTION_LABELS = {
    "": "as the file says",
    "epsilon": "epsilon (noise)",
    "v_prediction": "v-prediction",
    "v_prediction_ztsnr": "v-prediction, zero terminal SNR",
}


@dataclass(frozen=True)
class Prediction:
    prediction_type: str  # "epsilon" | "v_prediction"
    zero_terminal_snr: bool

    @property
    def name(self) -> str:
        """The ``Recipe.prediction_type`` value that means this."""
        if self.prediction_type == "v_prediction":
            return "v_prediction_ztsnr" if self.zero_terminal_snr else "v_prediction"
        return "epsilon"


def resolve_prediction(override: str, info: FileInfo, base_config: Any = None) -> Prediction | None:
    """The prediction a job runs with: the override, else the file's, else None (keep the
    pipeline's own scheduler config, which for SD 1.5/SDXL base is epsilon)."""
    if override not in PREDICTION_TYPES:
        raise EngineError(
            ErrorCode.INVALID_RECIPE,
            f"unknown prediction type {override!r}; use one of {', '.join(repr(p) for p in PREDICTION_TYPES)}",
        )
    if override == "epsilon":
        return Prediction("epsilon", False)
    if override:
        return Prediction("v_prediction", override == "v_prediction_ztsnr")
    if info.prediction_type is not None or info.zero_terminal_snr:
        return Prediction(info.prediction_type or "epsilon", info.zero_terminal_snr)
    return None


def scheduler_overrides(prediction: Prediction | None, scheduler_class: type, sampler_name: str) -> dict[str, Any]:
    """Keyword arguments for ``scheduler_class.from_config`` that make it match the model."""
    if prediction is None:
        return {}
    accepted = inspect.signature(scheduler_class.__init__).parameters
    options: dict[str, Any] = {"prediction_type": prediction.prediction_type}
    if prediction.zero_terminal_snr:
        if "rescale_betas_zero_snr" not in accepted:
            raise EngineError(
                ErrorCode.INVALID_RECIPE,
                f"the sampler {sampler_name!r} cannot run zero-terminal-SNR models; pick Euler, Euler a, "
                "DPM++ 2M, DDIM or UniPC",
            )
        options["rescale_betas_zero_snr"] = True
        options["timestep_spacing"] = "trailing"
    return options
