"""FLUX.1 (dev, schnell and their kin): a 12B rectified-flow DiT reading CLIP-L (pooled) and
T5-XXL, with a 16-channel VAE packed 2x2 into tokens, hence sizes in multiples of 16.

This is the torch-free half: how FLUX files and Civitai's names are recognised and which rules
a FLUX request follows. The runtime (``loading``, ``lora_keys``, ``pipeline`` beside this
file) is built against :class:`engine.arch.runtime.Runtime`; until it lands, :data:`RUNS`
stays False and FLUX files are recognised and refused by name at registration.

Variants differ where their files and defaults do: dev has a guidance embedding (distilled
guidance, about 3.5, no negative prompt, 28 steps, T5 512 tokens); schnell has none (4 steps,
guidance off, T5 256 tokens); Kontext edits a reference image and Fill inpaints (both come
with the picture-in issue); Krea is a dev-architecture fine-tune.
"""

from __future__ import annotations

from engine.arch.base import (
    Architecture,
    BaseModelName,
    DitRule,
    Guidance,
    PromptBudget,
    SizeRule,
    Tensors,
    Variant,
    path_matcher,
)

#: The one switch: True once engine.arch.flux's runtime loads and runs FLUX end to end.
RUNS = True

#: FLUX.1's hidden width (24 heads x 128).
WIDTH = 3072

#: Distilled guidance as FLUX dev was trained to read it (a model input, not CFG).
DEV_GUIDANCE = Guidance("distilled", 3.5, low=1.0, high=10.0, typical="3.5")
#: schnell was distilled to four steps without a guidance input: a value set is not used.
SCHNELL_GUIDANCE = Guidance("none", 0.0, typical="none (schnell ignores it)")


#: The image input of the denoiser (BFL and diffusers names, with the prefixes full files add).
_IMAGE_INPUTS = ("img_in.weight", "x_embedder.weight")
_GUIDANCE_INPUTS = ("guidance_in.", "time_text_embed.guidance_embedder.")
_PREFIXES = ("", "model.diffusion_model.", "diffusion_model.", "transformer.")
#: Fill reads the noise (64 packed channels) with the masked image and the mask (320 more).
_FILL_INPUT = 384


def checkpoint_variant(tensors: Tensors) -> str | None:
    """"fill", "dev" or "schnell" from where their files differ: Fill's wider image input,
    dev's guidance embedding (schnell was distilled without one). Kontext and Krea files
    look like dev's; Civitai's names tell them apart. None for a file without FLUX's image
    input (a partial file, or one only its metadata calls FLUX): nothing to tell from."""
    shapes = [tensors[p + n].get("shape") for p in _PREFIXES for n in _IMAGE_INPUTS if p + n in tensors]
    if not shapes:
        return None
    if any(shape and len(shape) == 2 and shape[1] == _FILL_INPUT for shape in shapes):
        return "fill"
    if not any(k.startswith(p + g) for k in tensors for p in _PREFIXES for g in _GUIDANCE_INPUTS):
        return "schnell"
    return "dev"


def _shape(width: int | None, _joint: bool, cross: bool, _paths: tuple[str, ...]) -> bool:
    # diffusers' transformer_blocks layout is shared with SD 3 and others; FLUX's width is 3072
    # and it has no separate cross-attention (PixArt and SANA have attn2).
    return width == WIDTH and not cross


FLUX = Architecture(
    name="flux",
    label="FLUX.1",
    runnable=RUNS,
    #: Image-to-image (and the upscale pass) runs through the runtime's ``img2img`` (issue 20).
    capabilities=frozenset({"txt2img", "img2img"}),
    ecosystems=("flux1", "flux", "fluxkrea", "flux1kontext"),
    base_models=(
        BaseModelName("flux.1 d", variant="dev"),
        BaseModelName("flux.1 s", variant="schnell"),
        BaseModelName("flux.1 kontext", variant="kontext"),
        BaseModelName("flux.1 krea", variant="krea"),
        BaseModelName("flux.1 fill", variant="fill"),
        BaseModelName("flux.1"),
    ),
    metadata_hints=("flux",),
    pipeline_classes={
        "FluxPipeline": None,
        "FluxFillPipeline": "fill",
        "FluxKontextPipeline": "kontext",
    },
    checkpoint_variant=checkpoint_variant,
    dit=DitRule(
        structure=path_matcher(r"(double_blocks|single_blocks|single_transformer_blocks)[._]"),
        shape=_shape,
        priority=10,
    ),
    size=SizeRule(
        multiple=16,
        min_pixels=256 * 256,
        max_pixels=2048 * 2048,
        hint="1024x1024",
        default=(1024, 1024),
        presets=(
            ("1024×1024 · square", "1024x1024"),
            ("832×1216 · portrait", "832x1216"),
            ("1216×832 · landscape", "1216x832"),
            ("1344×768 · wide 16:9", "1344x768"),
            ("768×1344 · tall 9:16", "768x1344"),
            ("1408×1408 · square 2 MP", "1408x1408"),
            ("1152×1728 · portrait 2 MP", "1152x1728"),
            ("1728×1152 · landscape 2 MP", "1728x1152"),
        ),
    ),
    samplers=("Euler",),
    flow_matching=True,
    default_sampler="Euler",
    default_steps=28,
    guidance=DEV_GUIDANCE,
    uses_negative=False,
    prompt_budget=PromptBudget("t5", 512, emphasis=False),
    text_encoders=("clip_l", "t5"),
    clip_skip=False,
    embeddings=False,
    variants={
        "dev": Variant("dev", "FLUX.1 dev", steps=28, guidance=DEV_GUIDANCE),
        "krea": Variant("krea", "FLUX.1 Krea", steps=28, guidance=DEV_GUIDANCE),
        "schnell": Variant(
            "schnell", "FLUX.1 schnell", steps=4, guidance=SCHNELL_GUIDANCE,
            prompt_budget=PromptBudget("t5", 256, emphasis=False),
        ),
        "kontext": Variant("kontext", "FLUX.1 Kontext", steps=28, guidance=DEV_GUIDANCE, capabilities=frozenset({"edit"})),
        "fill": Variant("fill", "FLUX.1 Fill", steps=28, guidance=DEV_GUIDANCE, capabilities=frozenset({"inpaint"})),
    },
    default_variant="dev",
    runtime="engine.arch.flux.pipeline",
)
