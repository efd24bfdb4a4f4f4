"""Stable Diffusion 1.x: a UNet reading one CLIP-L text encoder (768 wide), epsilon or v.

Torch-free: what the bot and the inspector read. The runtime (loading, LoRA targets, prompt
encoding, the denoising call) is shared with SDXL in :mod:`engine.arch.sd_runtime`.
"""

from __future__ import annotations

from engine.arch.base import Architecture, BaseModelName, Guidance, PromptBudget, SizeRule
from engine.arch.unet import input_variant
from engine.recipe.sampler_names import SAMPLERS

SD15 = Architecture(
    name="sd15",
    label="SD 1.5",
    runnable=True,
    #: Image-to-image (and the upscale pass) runs through the runtime's ``img2img`` (issue 20).
    capabilities=frozenset({"txt2img", "img2img"}),
    tiled_upscale=True,
    ecosystems=("sd1", "sd15"),
    base_models=(BaseModelName("sd 1.4", family="sd15"), BaseModelName("sd 1.5", family="sd15")),
    metadata_hints=("sd_v1", "sd_1", "stable-diffusion-v1"),
    pipeline_classes={
        "StableDiffusionPipeline": None,
        "StableDiffusionInpaintPipeline": "inpainting",
        "StableDiffusionInstructPix2PixPipeline": "instruct-pix2pix",
    },
    checkpoint_variant=input_variant,
    context_widths=(768,),
    size=SizeRule(
        multiple=8,
        min_pixels=256 * 256,
        max_pixels=1024 * 768,
        hint="512x512 or 512x768",
        default=(512, 512),
        presets=(
            ("512×512 · square", "512x512"),
            ("512×768 · portrait", "512x768"),
            ("768×512 · landscape", "768x512"),
        ),
    ),
    samplers=SAMPLERS,
    default_sampler="DPM++ 2M Karras",
    default_steps=20,
    guidance=Guidance("cfg", 7.0, typical="5 to 8"),
    uses_negative=True,
    prompt_budget=PromptBudget("clip_chunks", 75),
    runtime="engine.arch.sd_runtime:SD15",
)
