"""FLUX.2 (Klein 4B / 9B and their base models; dev recognised and refused): the torch-free half.

The runtime (``convert``, ``loading``, ``lora_keys``, ``pipeline`` beside this file) runs Klein
through diffusers' ``Flux2KleinPipeline``, behind :data:`RUNS`. FLUX.2 keeps BFL's block names (``double_blocks.N.img_attn.qkv``,
``single_blocks.N.linear1``) but moves the modulations out of the blocks
(``double_stream_modulation_img``, ``single_stream_modulation``) and uses a SwiGLU MLP of 3x the
width: its ``img_mlp.0`` has 6x the width in rows (FLUX.1: 4x), ``linear1`` 9x (FLUX.1: 7x) and
``linear2`` reads 4x (FLUX.1: 5x). diffusers names it ``ff.linear_in`` and
``attn.to_qkv_mlp_proj``. A LoRA that trains only the attention of a 3072-wide model (Klein
4B's width is FLUX.1's) cannot be told from a FLUX.1 one by its shapes; its metadata or
Civitai's ``baseModel`` then says which.

The size is the width: Klein 4B 3072 (Qwen3-4B text features, 3 x 2560 = 7680 wide), Klein 9B
4096 (Qwen3-8B, 12288), dev 6144 (Mistral Small 3.1, 15360). A LoRA for one size never fits
another; when a runtime lands (diffusers' ``Flux2KleinPipeline``), binding refuses it as
``arch_mismatch`` by width, as FLUX.1's does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from engine.arch.base import (
    Architecture,
    BaseModelName,
    DitRule,
    Guidance,
    PromptBudget,
    SizeRule,
    Tensors,
    Variant,
    never,
)

#: The one switch: True once engine.arch.flux2 loads and runs Klein end to end.
RUNS = True

#: Hidden width -> variant.
WIDTHS = {3072: "klein-4b", 4096: "klein-9b", 6144: "dev"}

_OWN = re.compile(r"^(double_stream_modulation_(img|txt)|single_stream_modulation)(_|$)|"
                  r"_(to_qkv_mlp_proj|ff_linear_in|ff_context_linear_in|ff_linear_out|ff_context_linear_out)$")  # fmt: skip
_MLP_IN = re.compile(r"^double_blocks_\d+_(img|txt)_mlp_0$")
_LINEAR1 = re.compile(r"^single_blocks_\d+_linear1$")
_LINEAR2 = re.compile(r"^single_blocks_\d+_linear2$")
_QKV = re.compile(r"^double_blocks_\d+_(img|txt)_attn_qkv$")


def is_flux2(modules: Mapping[str, tuple[int | None, int | None]]) -> bool:
    """FLUX.2 from its own module names, or BFL names with FLUX.2's MLP proportions or width."""
    for name, (out, inner) in modules.items():
        if _OWN.search(name):
            return True
        if out is None or inner is None:
            if inner in (4096, 6144) and _QKV.match(name):
                return True
            continue
        if (_MLP_IN.match(name) and out == 6 * inner) or (_LINEAR1.match(name) and out == 9 * inner):
            return True
        if _LINEAR2.match(name) and inner == 4 * out:
            return True
        if _QKV.match(name) and inner in (4096, 6144):
            return True
    return False


def checkpoint_variant(tensors: Tensors) -> str | None:
    """"klein-4b", "klein-9b" or "dev" from the width of the image input."""
    for key, value in tensors.items():
        if key.endswith(("img_in.weight", "x_embedder.weight")):
            shape = value.get("shape") or ()
            if len(shape) == 2:
                return WIDTHS.get(int(shape[0]))
    return None


def lora_variant(tensors: Tensors) -> str | None:
    """"klein-4b", "klein-9b" or "dev" from the width a LoRA's attention reads (None where the
    file shows no such layer, or a width no FLUX.2 has)."""
    from engine.arch.key_paths import _DIT_TOP, denoiser_path, module_features

    paths = {key: path for key in tensors if _DIT_TOP.match(path := denoiser_path(key))}
    for name, (_out, inner) in module_features(tensors, paths).items():
        if inner is not None and (_QKV.match(name) or name.endswith(("_attn_to_q", "_attn_to_qkv_mlp_proj"))):
            return WIDTHS.get(inner)
    return None


KLEIN_GUIDANCE = Guidance("none", 1.0, typical="none (distilled Klein ignores it)")
BASE_GUIDANCE = Guidance("cfg", 4.0, low=1.0, high=10.0, typical="4")

FLUX2 = Architecture(
    name="flux2",
    label="FLUX.2",
    runnable=RUNS,
    ecosystems=("flux2", "flux2klein_4b", "flux2klein_9b", "flux2klein_4b_base", "flux2klein_9b_base"),
    base_models=(
        BaseModelName("flux.2 klein 4b base", variant="klein-4b-base"),
        BaseModelName("flux.2 klein 9b base", variant="klein-9b-base"),
        BaseModelName("flux.2 klein 4b", variant="klein-4b"),
        BaseModelName("flux.2 klein 9b", variant="klein-9b"),
        BaseModelName("flux.2 d", variant="dev"),
        BaseModelName("flux.2"),
    ),
    metadata_hints=("flux-2", "flux2", "flux.2"),
    pipeline_classes={"Flux2Pipeline": "dev", "Flux2KleinPipeline": None},
    dit=DitRule(structure=never, shape=never, modules=is_flux2, priority=5),
    checkpoint_variant=checkpoint_variant,
    lora_variant=lora_variant,
    size=SizeRule(
        multiple=16, min_pixels=256 * 256, max_pixels=2048 * 2048, hint="1024x1024", default=(1024, 1024),
        presets=(("1024×1024 · square", "1024x1024"), ("832×1216 · portrait", "832x1216"),
                 ("1216×832 · landscape", "1216x832"), ("1344×768 · wide 16:9", "1344x768")),
    ),
    samplers=("Euler",),
    flow_matching=True,
    default_sampler="Euler",
    default_steps=4,
    guidance=KLEIN_GUIDANCE,
    uses_negative=False,
    prompt_budget=PromptBudget("llm", 512, emphasis=False),
    text_encoders=("qwen3",),
    clip_skip=False,
    embeddings=False,
    variants={
        "klein-4b": Variant("klein-4b", "FLUX.2 Klein 4B", steps=4, guidance=KLEIN_GUIDANCE, size="4b"),
        "klein-9b": Variant("klein-9b", "FLUX.2 Klein 9B", steps=4, guidance=KLEIN_GUIDANCE, size="9b"),
        "klein-4b-base": Variant("klein-4b-base", "FLUX.2 Klein 4B base", steps=50, guidance=BASE_GUIDANCE,
                                 uses_negative=True, size="4b"),
        "klein-9b-base": Variant("klein-9b-base", "FLUX.2 Klein 9B base", steps=50, guidance=BASE_GUIDANCE,
                                 uses_negative=True, size="9b"),
        "dev": Variant("dev", "FLUX.2 dev", steps=50, guidance=Guidance("distilled", 4.0, low=1.0, high=10.0),
                       runs=False, size="32b"),
    },
    default_variant="klein-4b",
    runtime="engine.arch.flux2.pipeline",
)
