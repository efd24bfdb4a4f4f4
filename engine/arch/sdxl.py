"""Stable Diffusion XL: a UNet reading CLIP-L and OpenCLIP-G together (2048 wide), with
size micro-conditioning. Pony, Illustrious, NoobAI and Animagine are SDXL by architecture
(their lineage is a *family*, :mod:`engine.families`).

Torch-free; the runtime is shared with SD 1.5 in :mod:`engine.arch.sd_runtime`.
"""

from __future__ import annotations

from engine.arch.base import Architecture, BaseModelName, Guidance, PromptBudget, SizeRule
from engine.arch.unet import sdxl_variant
from engine.recipe.sampler_names import SAMPLERS

SDXL = Architecture(
    name="sdxl",
    label="SDXL",
    runnable=True,
    #: Image-to-image (and the upscale pass) runs through the runtime's ``img2img`` (issue 20).
    capabilities=frozenset({"txt2img", "img2img"}),
    tiled_upscale=True,
    ecosystems=("sdxl", "sdxldistilled", "pony", "illustrious", "noobai"),
    base_models=(
        BaseModelName("sdxl distilled", family="sdxl"),
        BaseModelName("sdxl", family="sdxl"),
        BaseModelName("pony", family="pony"),
        BaseModelName("illustrious", family="illustrious"),
        BaseModelName("noobai", family="noobai"),
    ),
    metadata_hints=("sdxl", "stable-diffusion-xl"),
    pipeline_classes={"StableDiffusionXLPipeline": None, "StableDiffusionXLInpaintPipeline": "inpainting"},
    checkpoint_variant=sdxl_variant,
    context_widths=(2048,),
    size=SizeRule(
        multiple=8,
        min_pixels=640 * 640,
        max_pixels=1536 * 1536,
        hint="1024x1024 or 832x1216",
        default=(1024, 1024),
        presets=(
            ("1024×1024 · square", "1024x1024"),
            ("832×1216 · portrait", "832x1216"),
            ("1216×832 · landscape", "1216x832"),
            ("1344×768 · wide 16:9", "1344x768"),
            ("768×1344 · tall 9:16", "768x1344"),
        ),
    ),
    samplers=SAMPLERS,
    default_sampler="DPM++ 2M Karras",
    default_steps=20,
    guidance=Guidance("cfg", 7.0, typical="5 to 8"),
    uses_negative=True,
    prompt_budget=PromptBudget("clip_chunks", 75),
    text_encoders=("clip_l", "clip_g"),
    clip_skip_note=(
        "Clip skip {value} has no effect on SDXL: SDXL models always read the penultimate layer "
        "(what “clip skip 2” means for Pony), as in A1111."
    ),
    runtime="engine.arch.sd_runtime:SDXL",
)
