"""A VAE per recipe (any .safetensors VAE in the model folder), and tiling for large images."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.generate import Generator
from engine.protocol import EngineError, ErrorCode, Recipe
from tests.engine._images import mean_abs_diff, pixels

XL = Recipe(model="sdxl-tiny", prompt="a lighthouse", steps=2, width=64, height=64, seed=5)


@pytest.fixture(scope="module")
def vae_folder(demo_assets, tmp_path_factory):
    """The demo models plus VAE files: the model's own VAE in diffusers keys, a changed copy
    in the original (ldm) keys as standalone VAEs are often shipped, and a non-VAE file."""
    root = tmp_path_factory.mktemp("vae-models")
    shutil.copytree(demo_assets.model_root, root, dirs_exist_ok=True)
    generator = Generator(root, demo_assets.lora_root)
    generator.run(XL)
    vae = generator.current.pipe.vae
    state = {k: v.detach().clone().contiguous() for k, v in vae.state_dict().items()}
    (root / "vae").mkdir()
    save_file(state, str(root / "vae" / "same.safetensors"))
    from sandbox.model_builder import _vae_to_ldm

    changed = dict(state)
    changed["decoder.conv_out.weight"] = changed["decoder.conv_out.weight"] * -1.5
    ldm = {k: v.contiguous() for k, v in _vae_to_ldm(changed, dict(vae.config)).items()}
    save_file(ldm, str(root / "vae" / "changed-ldm.safetensors"))
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(root / "vae" / "not-a-vae.safetensors"))
    return root, generator


def test_a_recipe_vae_replaces_the_models_own_and_back(vae_folder) -> None:
    root, generator = vae_folder
    own = pixels(generator.run(XL).images[0])
    same = pixels(generator.run(dataclasses.replace(XL, vae="vae/same.safetensors")).images[0])
    assert np.array_equal(own, same)  # the same weights through the standalone loader
    changed = generator.run(dataclasses.replace(XL, vae="vae/changed-ldm.safetensors")).images[0]
    assert mean_abs_diff(changed, generator.run(XL).images[0]) > 5.0
    from engine.png_metadata import read_png_metadata

    metadata = read_png_metadata(changed)
    assert "VAE: changed-ldm.safetensors" in metadata["parameters"]  # as A1111 names it
    assert metadata["recipe"]["vae"] == "changed-ldm"  # a name, never the operator's path
    assert np.array_equal(own, pixels(generator.run(XL).images[0]))  # the own VAE is back


def test_a_file_that_is_not_a_vae_is_refused_clearly(vae_folder) -> None:
    _root, generator = vae_folder
    with pytest.raises(EngineError) as caught:
        generator.run(dataclasses.replace(XL, vae="vae/not-a-vae.safetensors"))
    assert caught.value.code in (ErrorCode.ARCH_MISMATCH, ErrorCode.INVALID_RECIPE)
    assert "VAE" in caught.value.message
    with pytest.raises(EngineError) as caught:
        generator.run(dataclasses.replace(XL, vae="../outside.safetensors"))
    assert caught.value.code is ErrorCode.OUTSIDE_FOLDER


def test_large_images_decode_in_tiles(vae_folder) -> None:
    _root, generator = vae_folder
    generator.vae_tiling_pixels = 96 * 96
    try:
        big = generator.run(dataclasses.replace(XL, width=128, height=128, steps=1)).images[0]
        assert pixels(big).shape == (128, 128, 3) and generator.current.pipe.vae.use_tiling
        generator.run(dataclasses.replace(XL, steps=1))
        assert not generator.current.pipe.vae.use_tiling
    finally:
        generator.vae_tiling_pixels = 1536 * 1536
