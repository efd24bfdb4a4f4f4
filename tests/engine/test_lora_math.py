"""LoRA stacks on the tiny models: the maths, the equivalences and the refusals, on both the
patched path (deltas in the weights) and the unfused one (deltas beside them)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors import safe_open

from engine.generate import Generator
from engine.protocol import EngineError, ErrorCode, LoraRef, Recipe
from tests.engine._images import mean_abs_diff, pixels

SD15 = Recipe(
    model="sd15-tiny.safetensors",
    prompt="a red fox in the snow",
    steps=3,
    width=64,
    height=64,
    seed=7,
)
SDXL = Recipe(
    model="sdxl-tiny", prompt="a red fox in the snow", steps=3, width=64, height=64, seed=7
)


def with_loras(recipe: Recipe, *loras: tuple[str, float]) -> Recipe:
    return dataclasses.replace(recipe, loras=tuple(LoraRef(file, weight) for file, weight in loras))


def run(generator: Generator, recipe: Recipe) -> bytes:
    return generator.run(recipe).images[0]


@pytest.fixture(scope="module", params=["patched", "unfused"])
def path_generator(request, demo_assets) -> Generator:
    """A generator forced onto one LoRA path; the invariants must hold on both."""
    return Generator(demo_assets.model_root, demo_assets.lora_root, lora_mode=request.param)


def test_weight_zero_equals_base_bit_for_bit(path_generator: Generator) -> None:
    base = pixels(run(path_generator, SD15))
    for file in ("sd15/watercolor.safetensors", "sd15/pixel-art.safetensors"):
        run(path_generator, with_loras(SD15, (file, 0.8)))  # something applied before
        zero = pixels(run(path_generator, with_loras(SD15, (file, 0.0))))
        assert np.array_equal(base, zero), file
    # and a job without LoRAs after LoRA jobs is the base again (weights restored)
    run(path_generator, with_loras(SD15, ("sd15/watercolor.safetensors", 1.0)))
    assert np.array_equal(base, pixels(run(path_generator, SD15)))


def test_weight_zero_equals_base_on_sdxl_with_both_text_encoders(
    sdxl_generator: Generator,
) -> None:
    base = pixels(run(sdxl_generator, SDXL))
    zero = run(sdxl_generator, with_loras(SDXL, ("sdxl/captain-nova-xl.safetensors", 0.0)))
    assert np.array_equal(base, pixels(zero))
    one = run(sdxl_generator, with_loras(SDXL, ("sdxl/captain-nova-xl.safetensors", 1.0)))
    assert mean_abs_diff(zero, one) > 1.0  # the same LoRA at 1 does change it


def test_lora_visibly_changes_the_image(path_generator: Generator) -> None:
    tiny_generator = path_generator
    base = run(tiny_generator, SD15)
    for file in (
        "sd15/watercolor.safetensors",
        "sd15/pixel-art.safetensors",
        "sd15/captain-nova.safetensors",
    ):
        assert mean_abs_diff(base, run(tiny_generator, with_loras(SD15, (file, 1.0)))) > 2.0, file


def test_sdxl_lora_visibly_changes_the_image(sdxl_generator: Generator) -> None:
    xl_base = run(sdxl_generator, SDXL)
    for file in ("sdxl/pixel-art-xl.safetensors", "sdxl/watercolor-xl.safetensors"):
        assert mean_abs_diff(xl_base, run(sdxl_generator, with_loras(SDXL, (file, 1.0)))) > 2.0, (
            file
        )


def _lora_pair(path, key: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    with safe_open(str(path), framework="pt") as f:
        down = f.get_tensor(f"{key}.lora_down.weight")
        up = f.get_tensor(f"{key}.lora_up.weight")
        alpha = float(f.get_tensor(f"{key}.alpha"))
    return down, up, alpha


@pytest.mark.parametrize(
    ("component", "module", "kohya_key"),
    [
        (
            "unet",
            "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
            "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k",
        ),
        (
            "text_encoder",
            "encoder.layers.2.self_attn.q_proj",
            "lora_te_text_model_encoder_layers_2_self_attn_q_proj",
        ),
    ],
)
def test_effective_layer_equals_w_plus_scaled_ba(
    path_generator: Generator, demo_assets, component, module, kohya_key
) -> None:
    """Effective weight of a layer = W + w·(alpha/r)·B·A, with A, B, alpha read from the file."""
    weight = 0.7
    path_generator.run(SD15)
    layer = dict(getattr(path_generator.current.pipe, component).named_modules())[module]
    base_w = layer.weight.detach().clone()
    path_generator.run(with_loras(SD15, ("sd15/twin-kohya.safetensors", weight)))
    down, up, alpha = _lora_pair(demo_assets.lora_root / "sd15/twin-kohya.safetensors", kohya_key)
    rank = down.shape[0]
    assert alpha != rank  # the scale really is exercised
    expected = base_w + weight * (alpha / rank) * (up @ down)
    # Probe the layer with the identity: its output rows are the effective weight's columns
    # (on the unfused path the live weight is the base one and the hook adds the rest).
    eye = torch.eye(base_w.shape[1])
    with torch.no_grad():
        bias = layer.bias if layer.bias is not None else 0.0
        effective = (layer(eye) - bias).T
    assert torch.allclose(effective, expected, atol=1e-5), (effective - expected).abs().max()
    assert not torch.allclose(effective, base_w, atol=1e-3)
    live_is_patched = not torch.equal(layer.weight, base_w)
    assert live_is_patched == (path_generator.lora_mode == "patched")


def test_stack_equals_its_reverse(path_generator: Generator) -> None:
    tiny_generator = path_generator
    a, b = ("sd15/watercolor.safetensors", 0.8), ("sd15/pixel-art.safetensors", -0.6)
    forward = run(tiny_generator, with_loras(SD15, a, b))
    backward = run(tiny_generator, with_loras(SD15, b, a))
    assert np.array_equal(pixels(forward), pixels(backward))
    assert mean_abs_diff(forward, run(tiny_generator, with_loras(SD15, a))) > 0.5


@pytest.mark.parametrize("recipe, folder", [(SD15, "sd15"), (SDXL, "sdxl")])
def test_kohya_and_diffusers_forms_give_identical_images(
    path_generator: Generator, recipe: Recipe, folder: str
) -> None:
    generator = path_generator
    kohya = run(generator, with_loras(recipe, (f"{folder}/twin-kohya.safetensors", 0.9)))
    diffusers = run(generator, with_loras(recipe, (f"{folder}/twin-diffusers.safetensors", 0.9)))
    assert np.array_equal(pixels(kohya), pixels(diffusers))
    assert mean_abs_diff(kohya, run(generator, recipe)) > 1.0


@pytest.mark.parametrize(
    "recipe, lora, names",
    [
        (SD15, "sdxl/pixel-art-xl.safetensors", ("SDXL", "SD 1.5")),
        (SDXL, "sd15/watercolor.safetensors", ("SD 1.5", "SDXL")),
        (SD15, "sd15/flux-only.safetensors", ("FLUX", "SD 1.5")),
    ],
)
def test_other_architecture_refused_before_denoising(
    tiny_generator: Generator, sdxl_generator: Generator, recipe, lora, names
) -> None:
    generator = sdxl_generator if recipe is SDXL else tiny_generator
    steps: list[int] = []
    with pytest.raises(EngineError) as caught:
        generator.run(
            with_loras(recipe, (lora, 1.0)), on_step=lambda done, total: steps.append(done)
        )
    assert caught.value.code is ErrorCode.ARCH_MISMATCH
    assert all(name in caught.value.message for name in names)
    assert steps == []


def test_lora_matching_nothing_refused_and_changed_nothing(path_generator: Generator) -> None:
    base = pixels(run(path_generator, SD15))
    steps: list[int] = []
    with pytest.raises(EngineError) as caught:
        path_generator.run(
            with_loras(SD15, ("sd15/watercolor.safetensors", 1.0), ("sd15/no-match.safetensors", 1.0)),
            on_step=lambda d, t: steps.append(d),
        )
    assert caught.value.code is ErrorCode.LORA_NO_MATCH
    assert "no layers matching" in caught.value.message and "sd15-tiny" in caught.value.message
    assert steps == []
    assert path_generator.current.patcher.applied[1] == ()  # the stack was not half-applied
    # the engine still works afterwards, on the base weights
    assert np.array_equal(base, pixels(run(path_generator, SD15)))


def test_size_mismatch_is_an_architecture_error(sdxl_generator: Generator, demo_assets) -> None:
    """When the header cannot tell the architecture, a layer shape that differs still does."""
    from engine.loras.reader import bind, read_lora_file

    sdxl_generator.run(SDXL)
    path = demo_assets.lora_root / "sd15/pixel-art.safetensors"
    parsed = read_lora_file(path, label="pixel-art", sha256="0" * 64)
    with pytest.raises(EngineError) as caught:
        bind(parsed, sdxl_generator.current.patcher.index, model_name="sdxl-tiny", model_arch="sdxl")
    assert caught.value.code is ErrorCode.ARCH_MISMATCH
    assert "SDXL" in caught.value.message and "shapes differ" in caught.value.message


def test_repeated_stack_does_not_reload_and_cache_is_bounded(demo_assets) -> None:
    generator = Generator(demo_assets.model_root, demo_assets.lora_root, cache_max_loras=2)
    a, b, c = (
        "sd15/watercolor.safetensors",
        "sd15/pixel-art.safetensors",
        "sd15/captain-nova.safetensors",
    )
    generator.run(with_loras(SD15, (a, 1.0), (b, 0.5)))
    assert generator.loras.loads == 2
    for _ in range(3):
        generator.run(with_loras(SD15, (b, 0.3), (a, 0.2)))
        generator.run(with_loras(SD15, (a, 1.0)))
    assert generator.loras.loads == 2
    generator.run(with_loras(SD15, (c, 1.0)))  # evicts b, the least recently used
    assert generator.loras.loads == 3 and generator.loras.evictions == 1
    sha = {f: generator.inspect(demo_assets.lora_root / f).sha256 for f in (a, b, c)}
    assert set(generator.loras.entries) == {sha[a], sha[c]}
    # Really freed: the model's matched files no longer hold the evicted one's tensors.
    generator.run(with_loras(SD15, (a, 1.0)))
    assert sha[b] not in generator.current.bound
    generator.run(with_loras(SD15, (b, 1.0)))
    assert generator.loras.loads == 4

    # The byte budget bounds it too: room for the largest parsed file only.
    sizes = [entry.size_bytes for entry in generator.loras.entries.values()]
    generator.loras.max_loras, generator.loras.max_bytes = 16, max(
        sizes + [generator.loras.entries[sha[b]].size_bytes]
    )
    for file in (a, b, c):
        generator.run(with_loras(SD15, (file, 1.0)))
    assert set(generator.loras.entries) == {sha[c]}
    assert generator.loras.total_bytes <= generator.loras.max_bytes


def test_changed_file_refused_by_hash(tiny_generator: Generator) -> None:
    recipe = dataclasses.replace(
        SD15, loras=(LoraRef("sd15/watercolor.safetensors", 1.0, sha256="0" * 64),)
    )
    with pytest.raises(EngineError) as caught:
        tiny_generator.run(recipe)
    assert caught.value.code is ErrorCode.UNKNOWN_FILE
