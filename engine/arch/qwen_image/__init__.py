"""Qwen-Image, and its edit models Qwen-Image-Edit (one picture) and Qwen-Image-Edit-2509 (up to three).

This is the torch-free half; the runtime (``loading``, ``lora_keys``, ``pipeline`` beside this
file) is built against :class:`engine.arch.runtime.Runtime`, behind :data:`RUNS`. A 20B MMDiT (60 blocks, 3072 wide) reading Qwen2.5-VL-7B's last hidden states, with
a Wan-style 16-channel VAE. Its blocks carry ``img_mlp``/``txt_mlp`` and ``img_mod``/``txt_mod``
(FLUX.1's diffusers blocks have ``ff``/``ff_context`` and ``norm1``), and a ``txt_norm`` before
its text input. The authors' pipeline (diffusers ``QwenImagePipeline``): true CFG with a negative
prompt (``true_cfg_scale`` 4), 50 steps, flow-matching Euler with a resolution-dependent shift,
sizes in multiples of 16 around 1328x1328, at most 1024 prompt tokens (512 by default).

The edit models share the text-to-image transformer's layout (their files look alike, so the
registry's variant decides, as for FLUX.1 Kontext): Qwen-Image-Edit (``QwenImageEditPipeline``)
reads one picture, both through Qwen2.5-VL's vision tower with the instruction and as VAE latents
appended to the noise; Qwen-Image-Edit-2509 and -2511 (``QwenImageEditPlusPipeline``) read up to
three. Text-to-image is the named variant "image", so a LoRA trained on it is flagged when stacked
on an edit model (and the other way round).
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

#: The one switch: True once engine.arch.qwen_image runs Qwen-Image end to end.
RUNS = True
WIDTH = 3072

QWEN_IMAGE = Architecture(
    name="qwen_image",
    label="Qwen-Image",
    runnable=RUNS,
    ecosystems=("qwen", "qwenimage"),
    base_models=(
        BaseModelName("qwen image edit 2509", variant="edit_plus"),
        BaseModelName("qwen-image-edit-2509", variant="edit_plus"),
        BaseModelName("qwen image edit 2511", variant="edit_plus"),
        BaseModelName("qwen-image-edit-2511", variant="edit_plus"),
        BaseModelName("qwen image edit plus", variant="edit_plus"),
        BaseModelName("qwen-image-edit-plus", variant="edit_plus"),
        BaseModelName("qwen image edit", variant="edit"),
        BaseModelName("qwen-image-edit", variant="edit"),
        BaseModelName("qwen edit", variant="edit"),
        BaseModelName("qwen", variant="image"),
    ),
    metadata_hints=("qwen-image", "qwen_image", "qwenimage"),
    pipeline_classes={"QwenImagePipeline": None, "QwenImageEditPipeline": "edit",
                      "QwenImageEditPlusPipeline": "edit_plus"},
    dit=DitRule(
        structure=path_matcher(r"transformer_blocks[._]\d+[._](img_mlp|txt_mlp|img_mod|txt_mod)[._]|txt_norm[._]"),
        shape=never,
        priority=15,
    ),
    size=SizeRule(
        multiple=16,
        min_pixels=512 * 512,
        max_pixels=2048 * 2048,
        hint="1328x1328",
        default=(1328, 1328),
        presets=(
            ("1328×1328 · square", "1328x1328"),
            ("1664×928 · wide 16:9", "1664x928"),
            ("928×1664 · tall 9:16", "928x1664"),
            ("1472×1104 · landscape 4:3", "1472x1104"),
            ("1104×1472 · portrait 3:4", "1104x1472"),
            ("1584×1056 · landscape 3:2", "1584x1056"),
            ("1056×1584 · portrait 2:3", "1056x1584"),
        ),
    ),
    samplers=("Euler",),
    flow_matching=True,
    default_sampler="Euler",
    default_steps=50,
    guidance=Guidance("cfg", 4.0, low=1.0, high=10.0, typical="4"),
    uses_negative=True,
    prompt_budget=PromptBudget("llm", 1024, emphasis=False),
    text_encoders=("qwen2.5-vl",),
    clip_skip=False,
    embeddings=False,
    capabilities=frozenset({"txt2img"}),
    variants={
        "image": Variant("image", "Qwen-Image"),  # the architecture's capabilities: text-to-image
        "edit": Variant("edit", "Qwen-Image-Edit", capabilities=frozenset({"edit"})),
        "edit_plus": Variant("edit_plus", "Qwen-Image-Edit-2509", capabilities=frozenset({"edit"}), max_images=3),
    },
    runtime="engine.arch.qwen_image.pipeline",
)
