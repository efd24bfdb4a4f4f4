"""FLUX.1 recipes (issue 18): written as Forge writes them, read from Forge and ComfyUI images.

The images carry what those tools write, chunk for chunk: Forge's ``parameters`` text
(``modules/processing.py``'s ``create_infotext``: ``CFG scale`` then ``Distilled CFG Scale``
only where the model has a guidance input, ``Diffusion in Low Bits`` and ``Module N`` after
``Version``), and ComfyUI's ``prompt`` (API graph, with each node's ``_meta`` title) and
``workflow`` chunks, from its FLUX example graphs (``UNETLoader``, ``DualCLIPLoader`` of type
``flux``, ``ModelSamplingFlux``, ``FluxGuidance``, ``CLIPTextEncodeFlux``,
``SamplerCustomAdvanced`` with ``RandomNoise``/``BasicGuider``/``KSamplerSelect``/``BasicScheduler``).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from engine.recipe import share_code
from engine.recipe.a1111 import carried, read_parameters, write_parameters
from engine.recipe.model import LoraRef, Recipe
from engine.recipe.readers import read_image
from tests.recipe import images

FORGE_FLUX_DEV = (
    "a lighthouse on a cliff at dusk, waves crashing, cinematic light <lora:flux-style:0.8>\n"
    "Steps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5, "
    "Seed: 1937405913, Size: 896x1152, Model hash: bea01d51bd, Model: flux1-dev-bnb-nf4-v2, "
    'Lora hashes: "flux-style: 5d1c2a7e3f90", Version: f2.0.1v1.10.1-previous-669-gdfdcbab6, '
    "Diffusion in Low Bits: bnb-nf4 (fp16 LoRA), Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp8_e4m3fn"
)
#: Forge on schnell: no Distilled CFG Scale (``use_distilled_cfg_scale`` is False for it).
FORGE_FLUX_SCHNELL = (
    "a red fox in fresh snow\n"
    "Steps: 4, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Seed: 42, Size: 1024x1024, "
    "Model hash: d314672fb9, Model: flux1-schnell-fp8, Version: f2.0.1v1.10.1-previous-669-gdfdcbab6, "
    "Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp16"
)


def _meta(graph: dict[str, Any]) -> dict[str, Any]:
    """The API graph as ComfyUI saves it: each node with a ``_meta`` title (its class name)."""
    return {k: {"inputs": v["inputs"], "class_type": v["class_type"], "_meta": {"title": v["class_type"]}} for k, v in graph.items()}


def _workflow(graph: dict[str, Any]) -> dict[str, Any]:
    """The UI ``workflow`` chunk beside it: nodes with their widget values, and the links."""
    nodes, links = [], []
    for key, node in graph.items():
        widgets = [v for v in node["inputs"].values() if not isinstance(v, list)]
        nodes.append({"id": int(key), "type": node["class_type"], "pos": [0, 0], "size": [300, 100], "flags": {},
                      "order": len(nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {"Node name for S&R": node["class_type"]},
                      "widgets_values": widgets})  # fmt: skip
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                links.append([len(links) + 1, int(value[0]), value[1], int(key), len(links), name.upper()])
    return {"last_node_id": max(int(k) for k in graph), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}  # fmt: skip


def comfy_flux_png(graph: dict[str, Any]) -> bytes:
    return images.png({"prompt": json.dumps(_meta(graph)), "workflow": json.dumps(_workflow(graph))})


#: ComfyUI's FLUX.1 dev example (flux_dev_example), with a LoRA: the separate transformer, CLIP
#: pair and VAE, FluxGuidance on the prompt, SamplerCustomAdvanced with a BasicGuider.
COMFY_FLUX_DEV = {
    "12": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "fp8_e4m3fn"}},
    "11": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl_fp16.safetensors", "clip_name2": "clip_l.safetensors", "type": "flux"}},
    "10": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
    "30": {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": "flux/flux-style.safetensors", "strength_model": 0.8, "model": ["12", 0]}},
    "61": {"class_type": "ModelSamplingFlux", "inputs": {"max_shift": 1.15, "base_shift": 0.5, "width": 1024, "height": 1024, "model": ["30", 0]}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse on a cliff at dusk, waves crashing", "clip": ["11", 0]}},
    "60": {"class_type": "FluxGuidance", "inputs": {"guidance": 3.5, "conditioning": ["6", 0]}},
    "22": {"class_type": "BasicGuider", "inputs": {"model": ["61", 0], "conditioning": ["60", 0]}},
    "25": {"class_type": "RandomNoise", "inputs": {"noise_seed": 219670278747233}},
    "16": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
    "17": {"class_type": "BasicScheduler", "inputs": {"scheduler": "simple", "steps": 20, "denoise": 1.0, "model": ["61", 0]}},
    "27": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
    "13": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["25", 0], "guider": ["22", 0], "sampler": ["16", 0],
                                                              "sigmas": ["17", 0], "latent_image": ["27", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["10", 0]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}  # fmt: skip

#: ComfyUI's one-file FLUX example (flux_dev_checkpoint_example): KSampler at CFG 1, the
#: guidance from FluxGuidance, an empty negative.
COMFY_FLUX_CHECKPOINT = {
    "30": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux1-dev-fp8.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cute anime girl with massive fluffy fennec ears", "clip": ["30", 1]}},
    "35": {"class_type": "FluxGuidance", "inputs": {"guidance": 3.5, "conditioning": ["6", 0]}},
    "33": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["30", 1]}},
    "27": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
    "31": {"class_type": "KSampler", "inputs": {"seed": 972054013131368, "steps": 20, "cfg": 1.0, "sampler_name": "euler",
                                                 "scheduler": "simple", "denoise": 1.0, "model": ["30", 0], "positive": ["35", 0],
                                                 "negative": ["33", 0], "latent_image": ["27", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["31", 0], "vae": ["30", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}  # fmt: skip


def test_forge_flux_dev_image_reads_its_distilled_guidance() -> None:
    found = read_image(images.png({"parameters": FORGE_FLUX_DEV})).found
    assert found is not None and found.format == "Forge"
    recipe = found.recipe
    assert recipe.prompt == "a lighthouse on a cliff at dusk, waves crashing, cinematic light"
    assert (recipe.cfg_scale, recipe.architecture, recipe.steps, recipe.sampler) == (3.5, "flux", 20, "Euler")
    assert (recipe.seed, recipe.width, recipe.height) == (1937405913, 896, 1152)
    assert [(r.kind, r.name, r.weight, r.hashes) for r in found.resources] == [
        ("model", "flux1-dev-bnb-nf4-v2", None, ("bea01d51bd",)), ("lora", "flux-style", 0.8, ("5d1c2a7e3f90",)),
    ]  # fmt: skip
    assert found.missing == () and found.notes == ()


def test_forge_flux_schnell_and_real_cfg_beside_distilled() -> None:
    schnell = read_image(images.png({"parameters": FORGE_FLUX_SCHNELL})).found
    assert schnell is not None and (schnell.recipe.cfg_scale, schnell.recipe.steps) == (1.0, 4)
    # Forge can run a CFG above 1 on FLUX beside the distilled guidance (a second pass): the
    # guidance is what carries over, and the member is told about the rest.
    text = FORGE_FLUX_DEV.replace("CFG scale: 1, ", "CFG scale: 3.0, ")
    found = read_image(images.png({"parameters": text})).found
    assert found is not None and found.recipe.cfg_scale == 3.5
    assert any("CFG above 1 beside FLUX's distilled guidance" in n for n in found.notes), found.notes


def test_comfyui_flux_dev_graph() -> None:
    found = read_image(comfy_flux_png(COMFY_FLUX_DEV)).found
    assert found is not None and found.format == "ComfyUI"
    recipe = found.recipe
    assert recipe.prompt == "a lighthouse on a cliff at dusk, waves crashing" and recipe.negative_prompt == ""
    assert (recipe.seed, recipe.steps, recipe.cfg_scale, recipe.sampler) == (219670278747233, 20, 3.5, "Euler")
    assert (recipe.width, recipe.height, recipe.architecture, recipe.vae) == (1024, 1024, "flux", "")
    assert [(r.kind, r.name, r.weight) for r in found.resources] == [("model", "flux1-dev", None), ("lora", "flux-style", 0.8)]
    assert [(lo.name, lo.weight) for lo in recipe.loras] == [("flux-style", 0.8)]
    assert found.missing == ()
    assert any("t5xxl_fp16.safetensors, clip_l.safetensors" in n for n in found.notes), found.notes


def test_comfyui_flux_checkpoint_graph_and_clip_text_encode_flux() -> None:
    found = read_image(comfy_flux_png(COMFY_FLUX_CHECKPOINT)).found
    assert found is not None
    assert (found.recipe.cfg_scale, found.recipe.architecture, found.recipe.sampler) == (3.5, "flux", "Euler")
    assert found.recipe.prompt == "a cute anime girl with massive fluffy fennec ears" and found.model is not None
    assert found.model.name == "flux1-dev-fp8"
    # CLIPTextEncodeFlux carries both prompts and the guidance itself: T5's text is the prompt.
    graph = {k: dict(v) for k, v in COMFY_FLUX_CHECKPOINT.items() if k != "35"}
    graph["6"] = {"class_type": "CLIPTextEncodeFlux", "inputs": {"clip_l": "fennec girl", "t5xxl": "a cute anime girl with fluffy ears",
                                                                  "guidance": 2.5, "clip": ["30", 1]}}  # fmt: skip
    graph["31"] = {**graph["31"], "inputs": {**graph["31"]["inputs"], "positive": ["6", 0]}}
    found = read_image(comfy_flux_png(graph)).found
    assert found is not None
    assert (found.recipe.prompt, found.recipe.cfg_scale) == ("a cute anime girl with fluffy ears", 2.5)


def _flux_recipe(**changes: Any) -> Recipe:
    values: dict[str, Any] = dict(
        model="flux/flux1-dev.safetensors", model_name="Flux Dev", model_hash="bea01d51bd",
        prompt="a lighthouse on a cliff at dusk, waves crashing, (cinematic light:1.2)",
        loras=(LoraRef("flux/style.safetensors", 0.8, name="flux-style", a1111_hash="5d1c2a7e3f90"),),
        sampler="Euler", steps=28, cfg_scale=3.5, seed=1937405913, width=896, height=1152,
        architecture="flux", variant="dev",
    )  # fmt: skip
    values.update(changes)
    return Recipe(**values)


@pytest.mark.parametrize(
    ("changes", "settings"),
    [
        ({}, "CFG scale: 1, Distilled CFG Scale: 3.5, Seed"),
        ({"cfg_scale": 2.25}, "CFG scale: 1, Distilled CFG Scale: 2.25, Seed"),
        ({"variant": "schnell", "steps": 4, "cfg_scale": 1.0}, "CFG scale: 1, Seed"),
        ({"architecture": "sdxl", "variant": "", "cfg_scale": 6.5, "sampler": "DPM++ 2M Karras"}, "CFG scale: 6.5, Seed"),
    ],
)
def test_our_flux_recipe_is_written_as_forge_writes_it_and_reads_back(changes: dict[str, Any], settings: str) -> None:
    recipe = _flux_recipe(**changes)
    text = write_parameters(recipe, version="atelier 0.1.0")
    assert settings in text
    assert "Distilled" not in text or recipe.variant == "dev"
    read = read_parameters(text)
    assert read.recipe == carried(recipe) and read.missing == ()
    found = read_image(images.png({"parameters": text})).found
    # From an image the LoRA hashes are the resources' (to match the registry), not the refs'.
    expected = carried(recipe)
    expected = dataclasses.replace(expected, loras=tuple(dataclasses.replace(lo, a1111_hash=None) for lo in expected.loras))
    assert found is not None and found.recipe == expected
    assert [(r.name, r.hashes) for r in found.of_kind("lora")] == [("flux-style", ("5d1c2a7e3f90",))]
    # The share code keeps every field, architecture and variant included.
    assert share_code.decode(share_code.encode(recipe)) == recipe


def test_a_flux_recipe_survives_json_and_older_json_still_loads() -> None:
    recipe = _flux_recipe()
    assert Recipe.from_json(recipe.to_json()) == recipe
    old = {k: v for k, v in recipe.to_json().items() if k not in ("architecture", "variant")}
    assert Recipe.from_json(old) == dataclasses.replace(recipe, architecture="", variant="")


#: Civitai's generator on FLUX (the text Forge's infotext_utils fixes up when it sees "Civitai"
#: and "FLUX"): CFG scale is the distilled guidance, a meaningless Clip skip, "Sampler: Undefined".
CIVITAI_FLUX_TEXT = (
    "a knight in ornate armor, dramatic lighting\n"
    "Steps: 25, CFG scale: 3.5, Sampler: Undefined, Seed: 77, Size: 832x1216, Clip skip: 2, "
    'Created Date: 2024-08-20T0000:00.0000000Z, Civitai resources: [{"type":"checkpoint","modelVersionId":691639,'
    '"modelName":"FLUX","modelVersionName":"Dev"}], Civitai metadata: {}'
)


def test_civitai_flux_text_is_read_as_forge_reads_it() -> None:
    found = read_image(images.png({"parameters": CIVITAI_FLUX_TEXT})).found
    assert found is not None and found.format == "Civitai"
    recipe = found.recipe
    assert (recipe.architecture, recipe.cfg_scale, recipe.clip_skip, recipe.sampler) == ("flux", 3.5, 1, "Euler")
    assert found.model is not None and found.model.civitai_version == 691639
