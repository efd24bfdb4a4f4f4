"""Each tool's documented image format, read back (see tests/recipe/images.py)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from engine.protocol import LoraRef, Recipe
from engine.recipe.a1111 import write_parameters
from engine.recipe.readers import read_image
from tests.recipe import images

A1111_TEXT = (
    "masterpiece, a lighthouse, (fog:1.2) <lora:watercolor:0.6> <lora:pixel-art:-0.4>\n"
    "Negative prompt: lowres, bad hands\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3141592653, "
    "Size: 512x768, Model hash: 6ce0161689, Model: tiny-sd15, VAE hash: 235745af8d, "
    "VAE: vae-ft-mse.safetensors, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, "
    'Hires steps: 10, Hires upscaler: Latent, Lora hashes: "watercolor: 0123456789ab, pixel-art: ba9876543210", '
    'TI hashes: "easyneg: 1a2b3c4d5e6f", Version: v1.10.1'
)


def test_a1111_png_text_chunk() -> None:
    found = read_image(images.png({"parameters": A1111_TEXT})).found
    assert found is not None and found.format == "AUTOMATIC1111" and not found.exact
    recipe = found.recipe
    assert recipe.prompt == "masterpiece, a lighthouse, (fog:1.2)" and recipe.negative_prompt == "lowres, bad hands"
    assert (recipe.steps, recipe.sampler, recipe.cfg_scale, recipe.seed) == (28, "DPM++ 2M Karras", 6.5, 3141592653)
    assert (recipe.width, recipe.height, recipe.clip_skip, recipe.vae) == (512, 768, 2, "vae-ft-mse.safetensors")
    assert [(r.kind, r.name, r.weight, r.hashes) for r in found.resources] == [
        ("model", "tiny-sd15", None, ("6ce0161689",)),
        ("lora", "watercolor", 0.6, ("0123456789ab",)),
        ("lora", "pixel-art", -0.4, ("ba9876543210",)),
        ("embedding", "easyneg", None, ("1a2b3c4d5e6f",)),
        ("vae", "vae-ft-mse", None, ("235745af8d",)),
    ]
    # Issue 20: the hires fix is carried now (the second pass's strength is A1111's
    # "Denoising strength"); its Latent upscaler is replaced by Lanczos, with a note.
    assert (recipe.hires_scale, recipe.hires_steps, recipe.hires_strength) == (2.0, 10, 0.45)
    assert recipe.hires_upscaler == "Lanczos" and any("Hires upscaler Latent" in n for n in found.notes)
    assert found.missing == ()


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_a1111_exif_user_comment_in_jpeg_and_webp(fmt: str) -> None:
    found = read_image(images.jpeg_or_webp(A1111_TEXT, fmt)).found
    assert found is not None and found.source == "EXIF UserComment"
    assert found.recipe.seed == 3141592653 and [lo.name for lo in found.recipe.loras] == ["watercolor", "pixel-art"]


def test_forge_is_named_by_its_version() -> None:
    found = read_image(images.png({"parameters": A1111_TEXT.replace("v1.10.1", "f2.0.1v1.10.1-previous-1-g1")})).found
    assert found is not None and found.format == "Forge"


@pytest.mark.parametrize(("compressed", "mode"), [(True, "alpha"), (False, "alpha"), (True, "rgb")])
def test_stealth_png_info(compressed: bool, mode: str) -> None:
    data = images.stealth_png(A1111_TEXT, compressed=compressed, mode=mode, size=(64, 64) if compressed else (96, 96))
    found = read_image(data).found
    assert found is not None and "stealth" in found.source and found.recipe.seed == 3141592653


def test_comfyui_api_graph() -> None:
    found = read_image(images.comfy_png()).found
    assert found is not None and found.format == "ComfyUI"
    recipe = found.recipe
    assert recipe.prompt == "a fox in snow, goodhands" and recipe.negative_prompt == "blurry"
    assert (recipe.seed, recipe.steps, recipe.cfg_scale, recipe.sampler) == (42, 2, 6.5, "DPM++ 2M Karras")
    assert (recipe.width, recipe.height, recipe.clip_skip) == (256, 256, 2)
    assert [(r.kind, r.name, r.weight) for r in found.resources] == [
        ("model", "tiny-sd15", None), ("lora", "watercolor", 0.6), ("lora", "pixel-art", -0.4), ("embedding", "goodhands", None),
    ]  # fmt: skip
    assert any("separate text-encoder weight" in n for n in found.notes)


def test_comfyui_cyclic_and_deep_graphs_end() -> None:
    cyclic = {
        "1": {"class_type": "LoraLoader", "inputs": {"lora_name": "a.safetensors", "strength_model": 1, "model": ["2", 0]}},
        "2": {"class_type": "LoraLoader", "inputs": {"lora_name": "b.safetensors", "strength_model": 1, "model": ["1", 0]}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["3", 0], "seed": 1}},
    }
    found = read_image(images.comfy_png(cyclic)).found
    assert found is not None and "model" in found.missing
    deep = {str(i): {"class_type": "LoraLoader", "inputs": {"lora_name": f"{i}.safetensors", "model": [str(i + 1), 0]}} for i in range(3000)}
    deep["s"] = {"class_type": "KSampler", "inputs": {"model": ["0", 0], "seed": 2}}
    found = read_image(images.comfy_png(deep)).found
    assert found is not None and len(found.of_kind("lora")) <= 200


def test_invokeai_metadata() -> None:
    found = read_image(images.png({"invokeai_metadata": json.dumps(images.INVOKEAI)})).found
    assert found is not None and found.format == "InvokeAI"
    assert found.recipe.prompt == "a castle on a hill" and found.recipe.sampler == "DPM++ 2M Karras"
    assert found.recipe.clip_skip == 2 and (found.recipe.width, found.recipe.cfg_scale) == (832, 5.5)
    model, lora = found.resources
    assert model.name == "tiny-sdxl" and model.foreign_hash and model.hashes == ()
    assert lora.name == "watercolor-xl" and lora.weight == 0.75 and lora.hashes == ("cd" * 32,)
    assert any("BLAKE3" in n for n in found.notes)


def test_novelai_comment() -> None:
    texts = {"Software": "NovelAI", "Source": "NovelAI Diffusion V3 4BB0ED1D", "Description": "1girl",
             "Comment": json.dumps(images.NOVELAI_COMMENT)}  # fmt: skip
    found = read_image(images.png(texts)).found
    assert found is not None and found.format == "NovelAI"
    assert found.recipe.negative_prompt == "lowres, bad anatomy" and found.recipe.sampler == "Euler a Karras"
    assert found.recipe.model_name == "NovelAI Diffusion V3" and found.recipe.cfg_scale == 5.0
    assert any("only run on NovelAI" in n for n in found.notes)


def test_swarmui_png_and_jpeg() -> None:
    for data in (images.png({"parameters": json.dumps(images.SWARM)}), images.jpeg_or_webp(json.dumps(images.SWARM))):
        found = read_image(data).found
        assert found is not None and found.format == "SwarmUI"
        assert found.recipe.steps == 20 and found.recipe.sampler == "Euler a" and found.recipe.clip_skip == 2
        assert [(r.name, r.weight) for r in found.of_kind("lora")] == [("watercolor-xl", 0.8), ("pixel-art-xl", 0.5)]
        assert found.model is not None and found.model.name == "tiny-sdxl" and found.model.hashes == ("ef" * 32,)


def test_fooocus_json_scheme() -> None:
    found = read_image(images.png({"parameters": json.dumps(images.FOOOCUS), "fooocus_scheme": "fooocus"})).found
    assert found is not None and found.format == "Fooocus"
    assert found.recipe.prompt == "a dragon, cinematic, dramatic light" and found.recipe.seed == 12345
    assert (found.recipe.width, found.recipe.sampler, found.recipe.clip_skip) == (1024, "DPM++ 2M SDE Karras", 2)
    assert [(r.name, r.weight, r.hashes) for r in found.of_kind("lora")] == [("watercolor-xl", 0.5, ("9876543210",))]
    assert found.model is not None and found.model.hashes == ("0123456789",)


def test_civitai_generator_resources() -> None:
    found = read_image(images.jpeg_or_webp(images.CIVITAI_TEXT)).found
    assert found is not None and found.format == "Civitai"
    assert found.recipe.prompt == "a knight, detailed armor" and found.recipe.clip_skip == 2
    model, lora = found.resources
    assert model.civitai_version == 290640 and lora.civitai_version == 135931 and lora.weight == 0.45
    assert lora.name == "Watercolor XL"


def test_our_own_png_is_exact() -> None:
    from PIL import Image

    from engine.png_metadata import write_png

    recipe = Recipe(model="sd15/tiny.safetensors", prompt="p", loras=(LoraRef("a.safetensors", 0.5, "a"),), seed=9)
    found = read_image(write_png(Image.new("RGB", (4, 4)), write_parameters(recipe), recipe.to_json())).found
    assert found is not None and found.exact and found.recipe == recipe


def test_an_image_without_metadata_says_so() -> None:
    read = read_image(images.png())
    assert read.found is None and "no recipe found" in read.reason and read.kind == "png"
    assert "not an image" in read_image(b"\x00" * 100).reason


def test_novelai_stealth_payload() -> None:
    info = {"Software": "NovelAI", "Source": "NovelAI Diffusion V4 Curated 8BA2AF87", "Comment": json.dumps(images.NOVELAI_COMMENT)}
    found = read_image(images.stealth_png(json.dumps(info), size=(64, 64))).found
    assert found is not None and found.format == "NovelAI" and found.recipe.seed == 1234567


def test_old_novelai_prompt_is_the_description_chunk() -> None:
    found = read_image(images.png(images.NOVELAI_V1, image=Image.new("RGB", (512, 768)))).found
    assert found is not None and found.format == "NovelAI" and "'Description'" in found.source
    recipe = found.recipe
    assert recipe.prompt == "masterpiece, best quality, cat, space, icon"
    assert recipe.negative_prompt == "lowres, bad anatomy, bad hands"
    assert (recipe.steps, recipe.seed, recipe.cfg_scale, recipe.sampler) == (50, 2253955223, 10.0, "Euler a")
    assert (recipe.width, recipe.height) == (512, 768) and "width" not in found.missing  # the image's own size
    assert recipe.clip_skip == 2  # as A1111 reads these images
    assert found.recipe.model_name == "Stable Diffusion"


@pytest.mark.parametrize(
    ("dream", "prompt", "negative", "settings"),
    [
        (images.DREAM_1X, "a fantasy landscape, castle", "blurry, lowres", (50, 1234567, 7.5, "LMS", 512, 768)),
        (images.DREAM_20, "there's a fly in my soup", "text", (30, 42, 9.0, "Euler a", 640, 512)),
        (images.DREAM_22, "an astronaut riding a horse", "cartoon, ugly", (25, 7, 6.5, "DPM++ 2M", 512, 512)),
    ],
)
def test_invokeai_dream_text(dream: str, prompt: str, negative: str, settings: tuple) -> None:
    found = read_image(images.invokeai_dream_png(dream)).found
    assert found is not None and found.format == "InvokeAI" and found.source == "PNG text chunk 'Dream'"
    recipe = found.recipe
    assert (recipe.prompt, recipe.negative_prompt) == (prompt, negative)
    assert (recipe.steps, recipe.seed, recipe.cfg_scale, recipe.sampler, recipe.width, recipe.height) == settings
    assert "model" in found.missing and found.resources == ()


def test_invokeai_dream_notes_what_does_not_carry_over() -> None:
    img2img = read_image(images.invokeai_dream_png(images.DREAM_20)).found
    upscaled = read_image(images.invokeai_dream_png(images.DREAM_22)).found
    assert img2img is not None and any("init image" in n for n in img2img.notes)
    assert upscaled is not None and any("upscaling" in n for n in upscaled.notes)


def test_invokeai_2_prefers_sd_metadata_over_its_dream_twin() -> None:
    sd_metadata = {"model_weights": "stable-diffusion-1.5", "image": {"prompt": [{"prompt": "a cat", "weight": 1}],
                   "steps": 20, "cfg_scale": 7.5, "seed": 5, "width": 512, "height": 512, "sampler": "k_euler_a"}}  # fmt: skip
    found = read_image(images.png({"Dream": images.DREAM_20, "sd-metadata": json.dumps(sd_metadata)})).found
    assert found is not None and found.source == "PNG text chunk 'sd-metadata'" and found.recipe.model_name == "stable-diffusion-1.5"


def test_text_that_is_not_a_dream_command_is_not_read() -> None:
    assert read_image(images.invokeai_dream_png("just some words")).found is None
