"""FLUX.1 generation on the tiny model: deterministic, FLUX's guidance and shift, long prompts, LoRAs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.arch.flux.loading import load_folder, load_from_files
from engine.arch.flux.lora_keys import bind_flux_lora, read_flux_lora
from engine.arch.flux.pipeline import FluxRequest, encode, generate
from engine.patcher import StackEntry, WeightPatcher
from engine.protocol import EngineError, ErrorCode
from sandbox.flux_builder import build_flux
from tests.engine import _flux

flux_build = _flux.flux_build  # the shared session fixture

SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture
def pipe(flux_build):
    return load_folder(flux_build.folder, dtype=torch.float32)


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


def test_same_request_same_pixels_other_seed_other_pixels(pipe) -> None:
    first = _pixels(generate(pipe, FluxRequest("a lighthouse at dusk", seed=5, **SMALL)))
    again = _pixels(generate(pipe, FluxRequest("a lighthouse at dusk", seed=5, **SMALL)))
    other = _pixels(generate(pipe, FluxRequest("a lighthouse at dusk", seed=6, **SMALL)))
    assert first.shape == (1, 64, 64, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.std() > 1.0  # an image, not a flat field


def test_distilled_guidance_changes_dev_and_schnell_refuses_it(pipe, tmp_path) -> None:
    low = _pixels(generate(pipe, FluxRequest("a red fox", guidance=1.0, **SMALL)))
    high = _pixels(generate(pipe, FluxRequest("a red fox", guidance=6.0, **SMALL)))
    assert not np.array_equal(low, high)
    build = build_flux(tmp_path, "schnell", seed=4)
    schnell = load_from_files(build.transformer, vae=build.vae, clip_l=build.clip_l, t5=build.t5, dtype=torch.float32)
    with pytest.raises(EngineError) as error:
        generate(schnell, FluxRequest("a red fox", guidance=3.5, **SMALL))
    assert error.value.code == ErrorCode.INVALID_RECIPE and "schnell" in str(error.value)
    assert _pixels(generate(schnell, FluxRequest("a red fox", **SMALL))).shape == (1, 64, 64, 3)
    assert not schnell.scheduler.config.use_dynamic_shifting


def test_shift_depends_on_resolution_for_dev(pipe) -> None:
    generate(pipe, FluxRequest("x", width=64, height=64, steps=4))
    small = pipe.scheduler.sigmas.clone()
    generate(pipe, FluxRequest("x", width=128, height=128, steps=4))
    large = pipe.scheduler.sigmas.clone()
    assert small.shape == large.shape and (large[1:-1] > small[1:-1]).all()  # more tokens, more shift


def test_sizes_must_be_multiples_of_16(pipe) -> None:
    with pytest.raises(EngineError) as error:
        generate(pipe, FluxRequest("x", width=72, height=64, steps=1))
    assert error.value.code == ErrorCode.INVALID_RECIPE and "multiple of 16" in str(error.value)


def test_a_300_token_prompt_reaches_t5_whole(pipe) -> None:
    words = "a weathered lighthouse keeper walks along the rocky shore at dusk carrying a lantern".split()
    prompt = " ".join(words * 20)
    assert len(pipe.tokenizer_2(prompt).input_ids) > 300
    changed = prompt + " and a small red boat far out at sea"
    t5_a, pooled_a = encode(pipe, prompt)
    t5_b, pooled_b = encode(pipe, changed)
    assert t5_a.shape[1] == 512
    assert torch.equal(pooled_a, pooled_b)  # CLIP-L reads its first 77 tokens only
    assert not torch.equal(t5_a, t5_b)  # T5 saw the words after token 300


def test_a_lora_changes_the_image_and_weight_zero_does_not(pipe, tmp_path) -> None:
    base = _pixels(generate(pipe, FluxRequest("a lighthouse", seed=1, **SMALL)))
    g = torch.Generator().manual_seed(0)
    state = {}
    for layer, rows in (("double_blocks_0_img_attn_qkv", 3), ("single_blocks_0_linear1", 7)):
        width = pipe.transformer.x_embedder.out_features
        state[f"lora_unet_{layer}.lora_down.weight"] = torch.randn(4, width, generator=g) * 0.5
        state[f"lora_unet_{layer}.lora_up.weight"] = torch.randn(rows * width, 4, generator=g) * 0.5
    save_file(state, str(tmp_path / "l.safetensors"))
    bound = bind_flux_lora(read_flux_lora(tmp_path / "l.safetensors", label="l", sha256="1" * 64), pipe, model_name="t")
    patcher = WeightPatcher(pipe)
    patcher.apply([StackEntry(bound, 0.0)])
    assert np.array_equal(_pixels(generate(pipe, FluxRequest("a lighthouse", seed=1, **SMALL))), base)
    patcher.apply([StackEntry(bound, 1.0)])
    assert not np.array_equal(_pixels(generate(pipe, FluxRequest("a lighthouse", seed=1, **SMALL))), base)
    patcher.restore_all()
    assert np.array_equal(_pixels(generate(pipe, FluxRequest("a lighthouse", seed=1, **SMALL))), base)
