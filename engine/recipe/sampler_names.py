"""The AUTOMATIC1111 sampler names a recipe may carry: one list for the bot and the engine.

People share recipes with A1111's names ("DPM++ 2M Karras"), so those are the names the bot
offers and checks and the engine runs (it maps each onto a diffusers scheduler in
:mod:`engine.samplers`, which checks at import that it maps exactly these). Plain Python, no
torch: the bot process imports this module.
"""

from __future__ import annotations

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
)

__all__ = ["SAMPLERS"]
