"""The AUTOMATIC1111 sampler names a recipe may carry: one list for the bot and the engine.

People share recipes with A1111's names ("DPM++ 2M Karras"), so those are the names the bot
offers and checks and the engine runs (it maps each onto a diffusers scheduler in
:mod:`engine.samplers`, which checks at import that it maps exactly these). Plain Python, no
torch: the bot process imports this module.

A name is A1111's sampler followed by its "Schedule type" where that is not "Automatic"
(:func:`engine.recipe.a1111.split_sampler` splits it for the text, the readers join it back).
The speed samplers follow the same rule: "Euler SGM Uniform" is Euler on trailing timesteps
(SDXL-Lightning's card: ComfyUI ``euler`` + ``sgm_uniform``, A1111 Euler + SGM Uniform),
"LCM SGM Uniform" is LCM on trailing timesteps (DMD2's 999/749/499/249 at 4 steps).
:data:`TOOL_NAMES` says how each is written by the other tools the readers read.
"""

from __future__ import annotations

from typing import NamedTuple

#: Every accepted sampler name, in the order a menu shows them (each plain name is followed
#: by its Karras form).
SAMPLERS: tuple[str, ...] = (
    "Euler",
    "Euler a",
    "DPM++ 2M",
    "DPM++ 2M Karras",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Karras",
    "DPM++ SDE",
    "DPM++ SDE Karras",
    "Heun",
    "LMS",
    "LMS Karras",
    "DDIM",
    "UniPC",
    # Speed samplers (speed LoRAs and distilled checkpoints; see engine.profiles).
    "Euler SGM Uniform",
    "DDIM SGM Uniform",
    "LCM",
    "LCM SGM Uniform",
    "TCD",
)


class ToolNames(NamedTuple):
    """How one sampler is written elsewhere: A1111/Forge ``Sampler`` + ``Schedule type``,
    ComfyUI ``KSampler`` ``sampler_name`` + ``scheduler``."""

    a1111: str
    schedule: str
    comfy: str
    comfy_scheduler: str


#: The speed samplers as the other tools write them (the readers' tables in
#: :mod:`engine.recipe.readers.samplers` are checked against this in the tests). TCD is
#: reForge's / Forge-classic's "TCD" sampler and the ComfyUI TCD node's ``tcd``.
TOOL_NAMES: dict[str, ToolNames] = {
    "Euler SGM Uniform": ToolNames("Euler", "SGM Uniform", "euler", "sgm_uniform"),
    "DDIM SGM Uniform": ToolNames("DDIM", "SGM Uniform", "ddim", "sgm_uniform"),
    "LCM": ToolNames("LCM", "Automatic", "lcm", "normal"),
    "LCM SGM Uniform": ToolNames("LCM", "SGM Uniform", "lcm", "sgm_uniform"),
    "TCD": ToolNames("TCD", "Automatic", "tcd", "normal"),
}

#: Samplers that read an ``eta`` (the recipe's ``eta``; None = the sampler's own default).
ETA_SAMPLERS: dict[str, float] = {"TCD": 0.3, "DDIM": 0.0, "DDIM SGM Uniform": 0.0}

__all__ = ["ETA_SAMPLERS", "SAMPLERS", "TOOL_NAMES", "ToolNames"]
