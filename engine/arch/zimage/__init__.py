"""Z-Image (Tongyi-MAI): a 6B single-stream DiT (S3-DiT) reading Qwen3-4B's hidden states,
with FLUX.1's 16-channel VAE, patches of 2x2 latents, hence sizes in multiples of 16.

This is the torch-free half: how Z-Image files and Civitai's names are recognised and which
rules a Z-Image request follows. The runtime (``convert``, ``loading``, ``lora_keys``,
``pipeline`` beside this file) is built against :class:`engine.arch.runtime.Runtime`; while
:data:`RUNS` is False its files are recognised and refused by name at registration.

Variants, from the authors' pipeline (diffusers ``ZImagePipeline`` and the model cards):
Turbo is distilled to 8 steps without guidance (guidance 0: one row per step, no negative
prompt); Base takes classifier-free guidance with a negative prompt (diffusers' scale 4, which
is ComfyUI's CFG 5: diffusers computes ``pos + g·(pos − neg)``, so a recipe's CFG is g + 1).
Both read the prompt through Qwen3's chat template, at most 512 tokens, and sample with
flow-matching Euler at a fixed shift of 3.

The layout (``layers.N.attention.qkv``, ``feed_forward.w1``, ``noise_refiner``,
``context_refiner``, ``cap_embedder``) is the NextDiT one Lumina 2 also uses; Z-Image's width is
3840 (Lumina 2's 2304), which a LoRA's or a checkpoint's shapes show when it is bound or loaded.
"""

from __future__ import annotations

from engine.arch.base import (
    Architecture,
    BaseModelName,
    DitRule,
    Guidance,
    PromptBudget,
    SizeRule,
    Variant,
    never,
    path_matcher,
)

#: The one switch: True once engine.arch.zimage's runtime loads and runs Z-Image end to end.
RUNS = True

#: Z-Image's hidden width (30 heads x 128) and Qwen3-4B's, which its caption embedder reads.
WIDTH = 3840
TEXT_WIDTH = 2560

#: Turbo was distilled to run without guidance: a CFG the member sets is not used.
TURBO_GUIDANCE = Guidance("none", 1.0, typical="none (Turbo ignores it)")
#: Base: true CFG with a negative prompt, as ComfyUI counts it (diffusers' 4 + 1).
BASE_GUIDANCE = Guidance("cfg", 5.0, low=1.0, high=10.0, typical="4 to 6")
BUDGET = PromptBudget("llm", 512, emphasis=False)

#: The denoiser's own module paths (original and diffusers names): Z-Image's NextDiT layout.
STRUCTURE = (
    r"(noise_refiner|context_refiner|cap_embedder|all_x_embedder|all_final_layer)[._]"
    r"|layers[._]\d+[._](attention[._](qkv|out|to_q|to_k|to_v|to_out)|feed_forward[._]w[123]|adaLN_modulation)"
)

ZIMAGE = Architecture(
    name="zimage",
    label="Z-Image",
    runnable=RUNS,
    #: Image-to-image (and the upscale pass) runs through the runtime's ``img2img`` (issue 20).
    capabilities=frozenset({"txt2img", "img2img"}),
    ecosystems=("zimageturbo", "zimagebase", "zimage"),
    base_models=(
        BaseModelName("zimageturbo", variant="turbo"),
        BaseModelName("z-image turbo", variant="turbo"),
        BaseModelName("z image turbo", variant="turbo"),
        BaseModelName("zimagebase", variant="base"),
        BaseModelName("z-image base", variant="base"),
        BaseModelName("z image base", variant="base"),
        BaseModelName("zimage"),
        BaseModelName("z-image"),
    ),
    metadata_hints=("z-image", "zimage", "z_image"),
    pipeline_classes={"ZImagePipeline": None},
    dit=DitRule(structure=path_matcher(STRUCTURE), shape=never, priority=20),
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
            ("1536×1536 · square 2.3 MP", "1536x1536"),
        ),
    ),
    samplers=("Euler",),
    flow_matching=True,
    default_sampler="Euler",
    default_steps=8,
    guidance=TURBO_GUIDANCE,
    uses_negative=False,
    prompt_budget=BUDGET,
    text_encoders=("qwen3",),
    clip_skip=False,
    embeddings=False,
    variants={
        "turbo": Variant("turbo", "Z-Image Turbo", steps=8, guidance=TURBO_GUIDANCE, uses_negative=False),
        "base": Variant("base", "Z-Image Base", steps=50, guidance=BASE_GUIDANCE, uses_negative=True),
    },
    default_variant="turbo",
    runtime="engine.arch.zimage.pipeline",
)
