"""FLUX.2's VAE as BFL publishes it (issue 19): ``flux2-vae.safetensors`` in BFL's layout loads
into diffusers' ``AutoencoderKLFlux2`` and renders the picture the repository's ``vae/`` does."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from engine.arch.flux2 import single_file
from engine.arch.flux2.loading import vae_from_folder
from engine.arch.flux2.pipeline import COMPONENTS_FOLDER, RUNTIME, find_components
from engine.generate import Generator
from engine.inspect import inspect_file
from engine.protocol import EngineError, ErrorCode, Recipe
from sandbox.flux2_builder import Flux2Build, build_klein, write_bfl_vae
from sandbox.model_builder import _save
from sandbox.qwen_image_builder import build_wan_vae, wan_vae_state


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Flux2Build, Path, object]:
    """Two models folders with the same Klein: the repository's ``vae/`` folder in one, BFL's
    single file in the other (batch-norm statistics made non-trivial in both)."""
    build = build_klein(tmp_path_factory.mktemp("flux2-sf") / "folders", seed=4)
    vae = vae_from_folder(build.components / "vae", dtype=torch.float32)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.randn(vae.bn.running_mean.shape, generator=generator) * 0.2)
        vae.bn.running_var.copy_(torch.rand(vae.bn.running_var.shape, generator=generator) + 0.5)
    vae.save_pretrained(str(build.components / "vae"), safe_serialization=True)
    single = tmp_path_factory.mktemp("flux2-sf") / "single"
    components = single / COMPONENTS_FOLDER
    shutil.copytree(build.components / "tokenizer", components / "tokenizer")
    for text in build.components.glob("qwen*.safetensors"):
        shutil.copy(text, components / text.name)
    shutil.copy(build.transformer, single / build.transformer.name)
    write_bfl_vae(vae, components / "flux2-vae.safetensors")
    return build, single, vae


def test_the_vae_file_is_in_bfls_layout_and_loads_its_tensors(roots) -> None:
    _build, single, vae = roots
    path = single / COMPONENTS_FOLDER / "flux2-vae.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        dtypes = {str(handle.get_slice(k).get_dtype()) for k in handle.keys()}
    # BFL's names, as in flux2-vae.safetensors (the mapping of diffusers' conversion script).
    for real in ("encoder.conv_in.weight", "encoder.down.0.block.0.norm1.weight", "encoder.down.0.downsample.conv.weight",
                 "encoder.mid.block_1.conv1.weight", "encoder.mid.attn_1.q.weight", "encoder.norm_out.weight",
                 "encoder.quant_conv.weight", "decoder.post_quant_conv.weight", "decoder.up.3.block.0.conv1.weight",
                 "decoder.up.1.upsample.conv.weight", "decoder.mid.attn_1.proj_out.weight",
                 "bn.running_mean", "bn.running_var"):  # fmt: skip
        assert real in shapes, real
    assert len(shapes["encoder.mid.attn_1.q.weight"]) == 4  # 1x1 convolutions
    assert "decoder.up.0.upsample.conv.weight" not in shapes  # the bottom level does not upsample
    assert dtypes == {"F32"} and "bn.num_batches_tracked" not in shapes
    loaded = single_file.load_vae(path, dtype=torch.float32)
    assert type(loaded).__name__ == "AutoencoderKLFlux2"
    source, got = vae.state_dict(), loaded.state_dict()
    assert set(source) == set(got)
    assert all(torch.equal(source[k], got[k]) for k in source)


def _pixels(png: bytes) -> bytes:
    from PIL import Image

    return Image.open(io.BytesIO(png)).tobytes()


def test_bfls_vae_renders_the_folders_picture_bit_for_bit(roots, tmp_path: Path) -> None:
    build, single, _vae = roots
    found = find_components(single, single / build.transformer.name, 32)
    assert found["vae"].name == "flux2-vae.safetensors"
    recipe = Recipe(model=build.transformer.name, prompt="a lighthouse", width=64, height=64, steps=2,
                    sampler="Euler", cfg_scale=1.0, seed=5)  # fmt: skip
    loras = tmp_path / "loras"
    loras.mkdir()
    from_folder = Generator(build.transformer.parent, loras).run(recipe).images[0]
    assert _pixels(Generator(single, loras).run(recipe).images[0]) == _pixels(from_folder)


def test_the_registry_tells_the_vae_apart(roots) -> None:
    build, single, _vae = roots
    info = inspect_file(single / COMPONENTS_FOLDER / "flux2-vae.safetensors")
    assert (info.kind, info.architecture) == ("vae", "flux2")
    assert inspect_file(single / build.transformer.name).kind == "checkpoint"


def test_another_models_vae_or_a_cut_file_is_named(roots, tmp_path: Path) -> None:
    build, single, _vae = roots
    root = tmp_path / "models"
    components = root / COMPONENTS_FOLDER
    shutil.copytree(single / COMPONENTS_FOLDER, components)
    (components / "flux2-vae.safetensors").unlink()
    _save(wan_vae_state(build_wan_vae(0)), components / "qwen_image_vae.safetensors", {})  # Qwen-Image's, not FLUX.2's
    transformer = root / build.transformer.name
    shutil.copy(build.transformer, transformer)
    with pytest.raises(EngineError) as caught:
        find_components(root, transformer, 32)
    assert caught.value.code is ErrorCode.UNKNOWN_FILE and "flux2-vae.safetensors" in str(caught.value)
    whole = (single / COMPONENTS_FOLDER / "flux2-vae.safetensors").read_bytes()
    (components / "flux2-vae.safetensors").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(EngineError) as caught:
        RUNTIME.load(transformer, device="cpu", dtype="float32", model_root=root)
    assert caught.value.code is ErrorCode.CORRUPT_FILE and "flux2-vae.safetensors" in str(caught.value)


def test_the_real_sizes_are_read_back_from_bfls_layout() -> None:
    """FLUX.2's published VAE sizes (meta tensors): the config read from the shapes is the shipped one."""
    import json

    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLFlux2

    from engine.arch.components import FLUX2_VAE, component_of
    from engine.component_configs import CONFIG_ROOT
    from sandbox.flux2_builder import bfl_vae_state

    shipped = json.loads((CONFIG_ROOT / "flux2_klein" / "vae" / "config.json").read_text())
    shipped.pop("_class_name")
    with init_empty_weights():
        state = bfl_vae_state(AutoencoderKLFlux2(**shipped))
    assert component_of({k: v.shape for k, v in state.items()}) == FLUX2_VAE
    read = single_file.vae_config(state)
    assert {k: list(v) if isinstance(v, list | tuple) else v for k, v in read.items()} == shipped
