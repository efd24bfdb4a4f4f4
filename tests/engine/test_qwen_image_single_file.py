"""Qwen-Image's VAE and text encoder as ComfyUI publishes them (issue 19): ``qwen_image_vae``
(Wan 2.1's layout) and ``qwen_2.5_vl_7b`` (bf16 and fp8 scaled, with or without the vision
tower) load into the modules the diffusers folder gives, and render the same pictures."""

from __future__ import annotations

import io
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from engine.arch.qwen_image import single_file
from engine.arch.qwen_image.loading import text_encoder_from_folder, vae_from_folder
from engine.arch.qwen_image.pipeline import COMPONENTS_FOLDER, RUNTIME, find_components
from engine.generate import Generator
from engine.inspect import inspect_file
from engine.protocol import EngineError, ErrorCode, Recipe
from sandbox.qwen_image_builder import QwenImageBuild, build_qwen_image, write_comfy_components
from sandbox.zimage_builder import build_zimage


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[QwenImageBuild, Path, dict[str, object]]:
    """Two models folders holding the same transformer: one with the repository's component
    folders (weights rounded to bf16, as ComfyUI's files store them), one with ComfyUI's files."""
    build = build_qwen_image(tmp_path_factory.mktemp("qwen-sf") / "folders", seed=3, wan_vae=True)
    parts: dict[str, object] = {}
    for name, load in (("vae", vae_from_folder), ("text_encoder", text_encoder_from_folder)):
        module = load(build.components / name, dtype=torch.float32)
        with torch.no_grad():
            for tensor in module.state_dict().values():
                tensor.copy_(tensor.to(torch.bfloat16).float())
        module.save_pretrained(str(build.components / name), safe_serialization=True)
        parts[name] = module
    single = tmp_path_factory.mktemp("qwen-sf") / "single"
    components = single / COMPONENTS_FOLDER
    shutil.copytree(build.components / "tokenizer", components / "tokenizer")
    shutil.copy(build.transformer, single / build.transformer.name)
    write_comfy_components(components, parts)
    return build, single, parts


def _header(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), framework="pt") as handle:
        return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}


def test_the_vae_file_is_in_wans_layout_and_loads_its_tensors(roots) -> None:
    _build, single, parts = roots
    path = single / COMPONENTS_FOLDER / "qwen_image_vae.safetensors"
    keys = set(_header(path))
    # Wan 2.1's own names, as in Comfy-Org's split_files/vae/qwen_image_vae.safetensors.
    for real in ("conv1.weight", "conv2.weight", "encoder.conv1.weight", "encoder.downsamples.0.residual.0.gamma",
                 "encoder.downsamples.5.time_conv.weight", "encoder.middle.1.to_qkv.weight",
                 "decoder.upsamples.3.resample.1.weight", "decoder.upsamples.4.shortcut.weight",
                 "decoder.upsamples.14.residual.6.weight", "decoder.head.2.weight"):  # fmt: skip
        assert real in keys, real
    assert not any(k.startswith(("encoder.down_blocks", "decoder.up_blocks", "quant_conv")) for k in keys)
    loaded = single_file.load_vae(path, dtype=torch.float32)
    assert type(loaded).__name__ == "AutoencoderKLQwenImage"
    source, got = parts["vae"].state_dict(), loaded.state_dict()  # type: ignore[attr-defined]
    assert set(source) == set(got)
    assert all(torch.equal(source[k], got[k]) for k in source)


@pytest.mark.parametrize("dtype", ["bf16", "fp8_scaled"])
def test_the_text_encoder_file_loads_its_tensors(roots, tmp_path: Path, dtype: str) -> None:
    _build, _single, parts = roots
    _vae, path = write_comfy_components(tmp_path, parts, text_dtype=dtype)  # type: ignore[arg-type]
    header = _header(path)
    for real in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.bias", "model.norm.weight",
                 "model.layers.1.mlp.down_proj.weight", "visual.patch_embed.proj.weight",
                 "visual.blocks.0.attn.qkv.weight", "visual.merger.mlp.2.weight"):  # fmt: skip
        assert real in header, real
    assert "lm_head.weight" not in header and not any(k.startswith("model.language_model") for k in header)
    loaded = single_file.load_text_encoder(path, dtype=torch.float32)
    got = loaded.state_dict()
    source = parts["text_encoder"].state_dict()  # type: ignore[attr-defined]
    assert set(got) == set(source)
    with safe_open(str(path), framework="pt") as handle:
        if dtype == "bf16":
            assert all(torch.equal(source[k], got[k]) for k in source if k != "lm_head.weight")
        else:
            assert "scaled_fp8" in handle.keys()
            key = "model.layers.0.self_attn.q_proj.weight"
            stored, scale = handle.get_tensor(key), handle.get_tensor("model.layers.0.self_attn.q_proj.scale_weight")
            assert stored.dtype == torch.float8_e4m3fn
            expected = stored.float() * scale.float()
            assert torch.equal(got["model.language_model." + key.removeprefix("model.")], expected)
            assert not torch.equal(expected, source["model.language_model.layers.0.self_attn.q_proj.weight"])
    # ComfyUI leaves lm_head out; the loaded one is the input embeddings (nothing reads logits).
    assert loaded.lm_head.weight is loaded.model.language_model.embed_tokens.weight


def test_a_text_encoder_without_its_vision_tower_reads_text_and_refuses_a_picture(roots, tmp_path: Path) -> None:
    _build, _single, parts = roots
    _vae, path = write_comfy_components(tmp_path, parts, vision=False)
    assert not any(k.startswith("visual.") for k in _header(path))
    loaded = single_file.load_text_encoder(path, dtype=torch.float32)
    with torch.no_grad():
        hidden = loaded(input_ids=torch.tensor([[5, 6, 7]]), output_hidden_states=True).hidden_states[-1]
        ours = parts["text_encoder"](input_ids=torch.tensor([[5, 6, 7]]), output_hidden_states=True)  # type: ignore[operator]
    assert torch.equal(hidden, ours.hidden_states[-1])
    with pytest.raises(EngineError) as caught:
        loaded.model.get_image_features(pixel_values=torch.zeros(4, 3 * 2 * 14 * 14), image_grid_thw=torch.tensor([[1, 2, 2]]))
    assert "vision tower" in str(caught.value) and "qwen_2.5_vl_7b.safetensors" in str(caught.value)


def _pixels(png: bytes) -> bytes:
    from PIL import Image

    return Image.open(io.BytesIO(png)).tobytes()


def test_comfyuis_components_render_the_folders_picture_bit_for_bit(roots, tmp_path: Path) -> None:
    build, single, _parts = roots
    found = find_components(single, single / build.transformer.name)
    assert found["vae"].name == "qwen_image_vae.safetensors" and found["text_encoder"].name == "qwen_2.5_vl_7b.safetensors"
    assert found["tokenizer"].is_dir()
    recipe = Recipe(model=build.transformer.name, prompt="a lighthouse", negative_prompt="fog", width=64, height=64,
                    steps=2, sampler="Euler", cfg_scale=4.0, seed=5)  # fmt: skip
    loras = tmp_path / "loras"
    loras.mkdir()
    from_folders = Generator(build.transformer.parent, loras).run(recipe).images[0]
    from_files = Generator(single, loras).run(recipe).images[0]
    assert _pixels(from_files) == _pixels(from_folders)
    assert _pixels(Generator(single, loras).run(replace(recipe, seed=6)).images[0]) != _pixels(from_files)


def test_the_registry_tells_the_files_apart(roots) -> None:
    build, single, _parts = roots
    vae = inspect_file(single / COMPONENTS_FOLDER / "qwen_image_vae.safetensors")
    text = inspect_file(single / COMPONENTS_FOLDER / "qwen_2.5_vl_7b.safetensors")
    model = inspect_file(single / build.transformer.name)
    assert (vae.kind, vae.architecture) == ("vae", "qwen_image")
    assert (text.kind, text.architecture) == ("text_encoder", "qwen_image")
    assert (model.kind, model.architecture) == ("checkpoint", "qwen_image")


def test_a_wrong_or_broken_file_in_the_components_folder_is_named(roots, tmp_path: Path) -> None:
    build, single, _parts = roots
    root = tmp_path / "models"
    components = root / COMPONENTS_FOLDER
    shutil.copytree(single / COMPONENTS_FOLDER / "tokenizer", components / "tokenizer")
    shutil.copy(single / COMPONENTS_FOLDER / "qwen_image_vae.safetensors", components)
    z = build_zimage(tmp_path / "z", seed=1)  # Z-Image's Qwen3 text encoder, not Qwen2.5-VL
    qwen3 = z.text_encoder
    shutil.copy(qwen3, components / qwen3.name)
    transformer = root / build.transformer.name
    shutil.copy(build.transformer, transformer)
    with pytest.raises(EngineError) as caught:
        find_components(root, transformer)
    text = str(caught.value)
    assert caught.value.code is ErrorCode.UNKNOWN_FILE
    assert "qwen_2.5_vl_7b.safetensors" in text and f"{qwen3.name} is no Qwen-Image VAE or text encoder" in text
    # A Qwen2.5-VL file cut short: named, and what was expected of it.
    whole = (single / COMPONENTS_FOLDER / "qwen_2.5_vl_7b.safetensors").read_bytes()
    (components / "qwen_2.5_vl_7b.safetensors").write_bytes(whole[: len(whole) - 100])
    with pytest.raises(EngineError) as caught:
        RUNTIME.load(transformer, device="cpu", dtype="float32", model_root=root)
    assert caught.value.code is ErrorCode.CORRUPT_FILE and "qwen_2.5_vl_7b.safetensors" in str(caught.value)


def test_a_file_missing_a_tensor_is_named_with_what_it_should_be(roots, tmp_path: Path) -> None:
    _build, single, _parts = roots
    from safetensors.torch import load_file, save_file

    for name, drop, expected in (("qwen_image_vae.safetensors", "decoder.upsamples.4.shortcut.weight",
                                  "qwen_image_vae.safetensors (Wan 2.1's VAE)"),
                                 ("qwen_2.5_vl_7b.safetensors", "model.layers.1.mlp.up_proj.weight",
                                  "qwen_2.5_vl_7b.safetensors (or its _fp8_scaled copy)")):  # fmt: skip
        state = load_file(str(single / COMPONENTS_FOLDER / name))
        del state[drop]
        save_file(state, str(tmp_path / name))
        load = single_file.load_vae if "vae" in name else single_file.load_text_encoder
        with pytest.raises(EngineError) as caught:
            load(tmp_path / name, dtype=torch.float32)
        text = str(caught.value)
        assert caught.value.code is ErrorCode.CORRUPT_FILE, text
        assert text.startswith(f"'{name}'") and "1 missing" in text and expected in text and "FLUX.1" not in text, text


def test_the_real_sizes_are_read_back_from_the_real_layouts() -> None:
    """The published sizes (meta tensors, nothing allocated): the configs read from the shapes
    are the shipped ones, Qwen2.5-VL's vision tower included."""
    import json

    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLQwenImage
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from engine.arch.components import QWEN25_VL, QWEN_IMAGE_VAE, component_of
    from engine.component_configs import CONFIG_ROOT
    from sandbox.qwen_image_builder import comfy_text_encoder_state, wan_vae_state

    vae_config = json.loads((CONFIG_ROOT / "qwen_image" / "vae" / "config.json").read_text())
    vae_config.pop("_class_name")
    shipped = json.loads((CONFIG_ROOT / "qwen_image" / "text_encoder" / "config.json").read_text())
    real = Qwen2_5_VLConfig(**{k: v for k, v in shipped.items() if k not in ("architectures", "model_type")})
    with init_empty_weights():
        vae = wan_vae_state(AutoencoderKLQwenImage(**vae_config))
        text = comfy_text_encoder_state(Qwen2_5_VLForConditionalGeneration(real))
    assert component_of({k: v.shape for k, v in vae.items()}) == QWEN_IMAGE_VAE
    assert component_of({k: v.shape for k, v in text.items()}) == QWEN25_VL
    assert single_file.vae_config(vae) == vae_config
    read = single_file.text_encoder_config(single_file.to_transformers(text))
    assert read.text_config.to_dict() == real.text_config.to_dict()
    assert read.vision_config.to_dict() == real.vision_config.to_dict()
    assert read.image_token_id == 151655 and read.vision_start_token_id == 151652
