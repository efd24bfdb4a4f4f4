"""Z-Image recipes (issue 19): ComfyUI images made with its Z-Image Turbo template are read back.

The graph is ComfyUI's z_image_turbo template: ``UNETLoader`` (the official single file),
``CLIPLoader`` of type ``lumina2`` with ``qwen_3_4b``, FLUX.1's ``ae`` through ``VAELoader``,
``ModelSamplingAuraFlow`` (shift 3), a LoRA, ``KSampler`` at CFG 1 with ``res_multistep``.
"""

from __future__ import annotations

from engine.recipe.readers import read_image
from tests.recipe.test_flux_recipes import comfy_flux_png

COMFY_ZIMAGE_TURBO = {
    "16": {"class_type": "UNETLoader", "inputs": {"unet_name": "z_image_turbo_bf16.safetensors", "weight_dtype": "default"}},
    "18": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2", "device": "default"}},
    "17": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
    "30": {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": "zimage/harbour.safetensors", "strength_model": 0.7, "model": ["16", 0]}},
    "11": {"class_type": "ModelSamplingAuraFlow", "inputs": {"shift": 3.0, "model": ["30", 0]}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a harbour town at dusk, warm lamps", "clip": ["18", 0]}},
    "7": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}},
    "13": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 1280, "batch_size": 1}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 4242, "steps": 8, "cfg": 1.0, "sampler_name": "res_multistep",
                                                "scheduler": "simple", "denoise": 1.0, "model": ["11", 0], "positive": ["6", 0],
                                                "negative": ["7", 0], "latent_image": ["13", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["17", 0]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "z-image", "images": ["8", 0]}},
}  # fmt: skip


def test_comfyui_zimage_turbo_graph() -> None:
    found = read_image(comfy_flux_png(COMFY_ZIMAGE_TURBO)).found
    assert found is not None and found.format == "ComfyUI"
    recipe = found.recipe
    assert recipe.prompt == "a harbour town at dusk, warm lamps" and recipe.negative_prompt == ""
    assert (recipe.seed, recipe.steps, recipe.cfg_scale, recipe.sampler) == (4242, 8, 1.0, "Euler")
    assert (recipe.width, recipe.height, recipe.architecture, recipe.variant, recipe.vae) == (1024, 1280, "zimage", "turbo", "")
    assert [(r.kind, r.name, r.weight) for r in found.resources] == [("model", "z_image_turbo_bf16", None), ("lora", "harbour", 0.7)]
    assert recipe.guidance_kind == "none"
    assert any("res_multistep" in n for n in found.notes) and any("qwen_3_4b.safetensors" in n for n in found.notes), found.notes


def test_a_lumina_2_graph_is_not_zimage() -> None:
    graph = {k: {**v, "inputs": dict(v["inputs"])} for k, v in COMFY_ZIMAGE_TURBO.items()}
    graph["18"]["inputs"]["clip_name"] = "gemma_2_2b_fp16.safetensors"
    graph["16"]["inputs"]["unet_name"] = "lumina_2.safetensors"
    found = read_image(comfy_flux_png(graph)).found
    assert found is not None and found.recipe.architecture != "zimage"


def _graph(unet: str, clip: str, clip_type: str, *, cfg: float, steps: int, sampler: str, negative: str) -> dict:
    graph = {k: {**v, "inputs": dict(v["inputs"])} for k, v in COMFY_ZIMAGE_TURBO.items() if k not in ("7", "30")}
    graph["16"]["inputs"]["unet_name"] = unet
    graph["18"]["inputs"].update(clip_name=clip, type=clip_type)
    graph["11"]["inputs"]["model"] = ["16", 0]
    graph["7"] = {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["18", 0]}}
    graph["3"]["inputs"].update(cfg=cfg, steps=steps, sampler_name=sampler)
    return graph


def test_comfyui_qwen_image_graph_keeps_its_true_cfg_and_negative() -> None:
    graph = _graph("qwen_image_fp8_e4m3fn.safetensors", "qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image",
                   cfg=2.5, steps=20, sampler="euler", negative="blurry, low quality")  # fmt: skip
    found = read_image(comfy_flux_png(graph)).found
    assert found is not None
    recipe = found.recipe
    assert (recipe.architecture, recipe.variant, recipe.cfg_scale, recipe.steps) == ("qwen_image", "", 2.5, 20)
    assert recipe.negative_prompt == "blurry, low quality" and recipe.guidance_kind == "cfg"
    assert recipe.vae == "" and found.model is not None and found.model.name == "qwen_image_fp8_e4m3fn"


def test_comfyui_flux2_klein_graph() -> None:
    graph = _graph("flux-2-klein-9b.safetensors", "qwen_3_8b.safetensors", "flux2", cfg=1.0, steps=4, sampler="euler",
                   negative="")  # fmt: skip
    found = read_image(comfy_flux_png(graph)).found
    assert found is not None
    assert (found.recipe.architecture, found.recipe.variant, found.recipe.steps) == ("flux2", "klein-9b", 4)
    assert found.recipe.guidance_kind == "none"


def test_comfyui_qwen_image_edit_graphs_name_their_edit_model() -> None:
    """Qwen-Image-Edit's and -2509's single files: the edit variant each runs (one picture, or up to three)."""
    for unet, variant in (("qwen_image_edit_fp8_e4m3fn.safetensors", "edit"),
                          ("qwen_image_edit_2509_fp8_e4m3fn.safetensors", "edit_plus")):  # fmt: skip
        graph = _graph(unet, "qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image", cfg=4.0, steps=20,
                       sampler="euler", negative=" ")  # fmt: skip
        found = read_image(comfy_flux_png(graph)).found
        assert found is not None and (found.recipe.architecture, found.recipe.variant) == ("qwen_image", variant)
