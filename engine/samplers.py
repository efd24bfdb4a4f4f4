"""AUTOMATIC1111 sampler names, mapped onto diffusers schedulers.

People share recipes with A1111's names ("DPM++ 2M Karras"), so those are the names the bot
accepts and writes into PNG metadata. The names themselves are defined once, torch-free, in
:mod:`engine.recipe.sampler_names` (the bot offers and checks the same list); this module maps
each onto a diffusers scheduler and refuses at import to map more or fewer. Each is built
``from_config`` of the pipeline's own scheduler so the model's training schedule (betas,
offsets, prediction type) is kept.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

from engine.protocol import EngineError, ErrorCode
from engine.recipe.sampler_names import SAMPLERS


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler: str  # diffusers class name
    options: dict[str, Any] = field(default_factory=dict)
    #: A1111's "Schedule type" column.
    schedule_type: str = "Automatic"


_SAMPLER_LIST = (
    Sampler("Euler", "EulerDiscreteScheduler"),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler"),
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler"),
    Sampler("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "Karras"),
    Sampler("DPM++ SDE", "DPMSolverSinglestepScheduler"),
    Sampler("DPM++ SDE Karras", "DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}, "Karras"),
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    Sampler(
        "DPM++ 2M SDE Karras",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
        "Karras",
    ),
    Sampler("Heun", "HeunDiscreteScheduler"),
    Sampler("LMS", "LMSDiscreteScheduler"),
    Sampler("LMS Karras", "LMSDiscreteScheduler", {"use_karras_sigmas": True}, "Karras"),
    Sampler("DDIM", "DDIMScheduler"),
    Sampler("UniPC", "UniPCMultistepScheduler"),
    # Speed samplers; the settings are the speed LoRAs' authors' (data/profiles.json).
    # Trailing spacing is what ComfyUI's sgm_uniform and A1111's "SGM Uniform" give on these.
    Sampler("Euler SGM Uniform", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}, "SGM Uniform"),
    Sampler("DDIM SGM Uniform", "DDIMScheduler", {"timestep_spacing": "trailing"}, "SGM Uniform"),
    Sampler("LCM", "LCMScheduler"),
    Sampler("LCM SGM Uniform", "TrailingLCMScheduler", {}, "SGM Uniform"),
    Sampler("TCD", "TCDScheduler"),
)


def check_covers(mapped: tuple[Sampler, ...], names: tuple[str, ...]) -> dict[str, Sampler]:
    """``mapped`` by name, in the order of ``names``; an error unless it maps exactly those.

    Run at import, so a name added to the shared list without a scheduler (or a scheduler
    for a name the bot does not offer) stops the engine from starting instead of failing a
    member's job later.
    """
    by_name = {s.name: s for s in mapped}
    missing = [name for name in names if name not in by_name]
    extra = [name for name in by_name if name not in names]
    if missing or extra or len(by_name) != len(mapped):
        raise RuntimeError(
            "engine.samplers must map exactly the names of engine.recipe.sampler_names.SAMPLERS: "
            f"no scheduler for {missing}, not in the shared list {extra}"
        )
    return {name: by_name[name] for name in names}


SAMPLER_BY_NAME = check_covers(_SAMPLER_LIST, SAMPLERS)


def get_sampler(name: str) -> Sampler:
    try:
        return SAMPLER_BY_NAME[name]
    except KeyError:
        raise EngineError(
            ErrorCode.INVALID_RECIPE,
            f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}",
        ) from None


def schedule_type(name: str) -> str:
    """The A1111 "Schedule type" label for a sampler name ("Karras" or "Automatic")."""
    return get_sampler(name).schedule_type


def a1111_base_name(name: str) -> str:
    """A1111 (>= 1.9) writes the sampler without the schedule: "DPM++ 2M" + "Karras"."""
    sampler = get_sampler(name)
    return name if sampler.schedule_type == "Automatic" else name.removesuffix(" " + sampler.schedule_type)


def trailing_timesteps(steps: int, train_steps: int = 1000) -> list[int]:
    """diffusers' "trailing" spacing: ``[999, 749, 499, 249]`` for 4 of 1000 (DMD2's README
    passes exactly these to LCMScheduler)."""
    # The same float steps as numpy's arange(train_steps, 0, -train_steps / steps) and the same
    # round-half-to-even, without importing numpy into this module for one list.
    stride = -train_steps / steps
    count = math.ceil(-train_steps / stride)
    return [int(round(train_steps + i * stride)) - 1 for i in range(count)]


def _trailing_lcm() -> type:
    """LCMScheduler on trailing timesteps.

    diffusers' LCMScheduler has no trailing spacing (its ``timestep_spacing`` is unused): DMD2's
    README passes the timesteps to the pipeline call instead. The engine's pipeline call is the
    same for every sampler, so this subclass hands LCMScheduler those timesteps itself; the
    stepping is LCMScheduler's own.
    """
    from diffusers import LCMScheduler

    class TrailingLCMScheduler(LCMScheduler):  # type: ignore[misc]
        def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None,
                          original_inference_steps: int | None = None, timesteps: list[int] | None = None,
                          strength: float = 1.0) -> None:  # fmt: skip
            if timesteps is None and num_inference_steps:
                timesteps = trailing_timesteps(num_inference_steps, self.config.num_train_timesteps)
            super().set_timesteps(None, device, original_inference_steps, timesteps, strength)

    return TrailingLCMScheduler


def scheduler_class(sampler: Sampler) -> type:
    import diffusers

    if sampler.scheduler == "TrailingLCMScheduler":
        return _TRAILING_LCM.setdefault("cls", _trailing_lcm())
    return getattr(diffusers, sampler.scheduler)  # type: ignore[no-any-return]


_TRAILING_LCM: dict[str, type] = {}


def flow_match_scheduler(base_config: Any, shift: float | None = None) -> Any:
    """Flow-matching Euler on a DiT's own scheduler config; ``shift`` fixes the shift (the
    Qwen-Image-Lightning README's 3) instead of the model's resolution-dependent one."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if shift is None:
        return FlowMatchEulerDiscreteScheduler.from_config(base_config)
    # A fixed shift is the plain ``shift * s / (1 + (shift - 1) * s)`` of ComfyUI's
    # ModelSamplingAuraFlow/SD3 and Forge, without Qwen-Image's terminal stretch (its config's
    # ``shift_terminal`` 0.02), which the Lightning README turns off ("set shift_terminal to None").
    return FlowMatchEulerDiscreteScheduler.from_config(
        base_config, shift=float(shift), use_dynamic_shifting=False, shift_terminal=None
    )


#: Sigma schedules a model's own scheduler config may switch on (many community SDXL folders
#: ship Karras or SDE settings); a sampler name must mean the same thing on every model.
_SIGMA_SCHEDULES = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def scheduler_options(sampler: Sampler, scheduler_class: type) -> dict[str, Any]:
    """Everything that defines ``sampler``, set explicitly so the base config cannot leak in.

    ``from_config`` keeps every value of the pipeline's own config that is not overridden, so
    "DPM++ 2M" on a model whose config says ``use_karras_sigmas``/``sde-dpmsolver++`` would
    silently run "DPM++ 2M SDE Karras" (and write the wrong name into the PNG).
    """
    accepted = inspect.signature(scheduler_class.__init__).parameters
    options: dict[str, Any] = {flag: False for flag in _SIGMA_SCHEDULES if flag in accepted}
    if "algorithm_type" in accepted:
        options["algorithm_type"] = "dpmsolver++"
    if "solver_order" in accepted:
        options["solver_order"] = 2  # A1111's DPM++ 2M / UniPC are second order
    options.update(sampler.options)
    return options


def make_scheduler(name: str, base_config: Any, prediction: Any = None) -> Any:
    """A fresh scheduler for ``name`` built from the pipeline's scheduler config.

    ``prediction`` (an :class:`engine.prediction.Prediction`) sets v-prediction and zero
    terminal SNR; None keeps what the pipeline's config says.
    """
    from engine.prediction import scheduler_overrides

    sampler = get_sampler(name)
    cls = scheduler_class(sampler)
    options = {**scheduler_options(sampler, cls), **scheduler_overrides(prediction, cls, name)}
    try:
        return cls.from_config(base_config, **options)
    except ImportError as exc:  # LMS needs scipy, which the engine does not require
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise EngineError(
            ErrorCode.INVALID_RECIPE,
            f"sampler {name!r} is not available on this engine ({' '.join(lines)}); "
            "pick another sampler or install the missing package",
        ) from exc
