"""Stable Diffusion 3 / 3.5 (MMDiT): recognised and refused by name; no runtime yet.

Torch-free. Its files are told apart from FLUX's by SD 3's own ``joint_blocks`` (BFL/SAI
layout) or, in diffusers' shared ``transformer_blocks.N.attn`` layout, by joint attention at
SD 3's widths (1536 for medium, 2432 for large) or its ``pos_embed``.
"""

from __future__ import annotations

from engine.arch.base import (
    Architecture,
    BaseModelName,
    DitRule,
    Guidance,
    PromptBudget,
    SizeRule,
    path_matcher,
)

#: Hidden widths: SD 3 medium / 3.5 medium 1536, SD 3.5 large 2432.
WIDTHS = (1536, 2432)


def _shape(width: int | None, joint: bool, _cross: bool, paths: tuple[str, ...]) -> bool:
    return joint and (width in WIDTHS or any(p.startswith("pos_embed") for p in paths))


SD3 = Architecture(
    name="sd3",
    label="SD 3",
    runnable=False,
    ecosystems=("sd3", "sd35m"),
    base_models=(BaseModelName("sd 3"),),
    metadata_hints=("sd3", "stable-diffusion-v3"),
    pipeline_classes={"StableDiffusion3Pipeline": None},
    dit=DitRule(structure=path_matcher(r"joint_blocks[._]"), shape=_shape),
    size=SizeRule(multiple=16, min_pixels=640 * 640, max_pixels=1536 * 1536, hint="1024x1024", default=(1024, 1024)),
    samplers=("Euler",),
    flow_matching=True,
    default_sampler="Euler",
    default_steps=28,
    guidance=Guidance("cfg", 4.5, low=1.0, high=15.0, typical="4.5 to 7"),
    uses_negative=True,
    prompt_budget=PromptBudget("t5", 256, emphasis=False),
    text_encoders=("clip_l", "clip_g", "t5"),
    clip_skip=False,
    embeddings=False,
)
