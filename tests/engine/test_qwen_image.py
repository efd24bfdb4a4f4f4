"""Qwen-Image (issue 19): loading the published layouts, true CFG with the negative prompt,
LoRAs in every trainer's layout merged with that tool's maths, through the engine's generator."""

from __future__ import annotations

import io
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine import arch
from engine.arch.flux.pipeline import memory_plan
from engine.arch.qwen_image.lora_keys import bind_qwen_lora, read_qwen_lora
from engine.arch.qwen_image.pipeline import COMPONENTS_FOLDER, RUNTIME, find_components
from engine.arch.runtime import Runtime
from engine.generate import Generator
from engine.patcher import PATCHED, StackEntry, WeightPatcher
from engine.protocol import EngineError, ErrorCode, LoraRef, Recipe
from sandbox.qwen_image_builder import QwenImageBuild, build_qwen_image, write_musubi_lora
from sandbox.zimage_builder import build_zimage, write_kohya_lora

RANK = 4
ATOL = 1e-5
GIB = 1 << 30


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> QwenImageBuild:
    return build_qwen_image(tmp_path_factory.mktemp("qwen") / "models", seed=2)


@pytest.fixture(scope="module")
def generator(build: QwenImageBuild, tmp_path_factory: pytest.TempPathFactory) -> Generator:
    loras = tmp_path_factory.mktemp("qwen-loras")
    write_musubi_lora(build.transformer, loras / "a.safetensors", seed=1)
    z = build_zimage(tmp_path_factory.mktemp("z"), seed=1)
    write_kohya_lora(z.transformer, loras / "zimage.safetensors", seed=1)
    return Generator(build.transformer.parent, loras)


@pytest.fixture
def pipe(build: QwenImageBuild):
    return RUNTIME.load(build.folder, device="cpu", dtype="float32")


def recipe(**changes: object) -> Recipe:
    base = Recipe(model="qwen_image_bf16.safetensors", prompt="a lighthouse", negative_prompt="fog", width=64,
                  height=64, steps=3, sampler="Euler", cfg_scale=4.0, seed=5)  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def _pixels(png: bytes) -> bytes:
    from PIL import Image

    return Image.open(io.BytesIO(png)).tobytes()


def test_single_file_and_folder_hold_the_same_model(build: QwenImageBuild, pipe) -> None:
    single = RUNTIME.load(build.transformer, device="cpu", dtype="float32", model_root=build.transformer.parent)
    a, b = single.transformer.state_dict(), pipe.transformer.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k].to(torch.bfloat16).float()) for k in a)
    assert isinstance(arch.runtime_of("qwen_image"), Runtime)
    assert RUNTIME.rows_per_image(recipe()) == 2 and RUNTIME.rows_per_image(recipe(cfg_scale=1.0)) == 1


def test_missing_components_are_named(build: QwenImageBuild, tmp_path: Path) -> None:
    shutil.copy(build.transformer, tmp_path / "q.safetensors")
    (tmp_path / COMPONENTS_FOLDER).mkdir()
    (tmp_path / COMPONENTS_FOLDER / "qwen_image_vae.safetensors").write_bytes(b"")
    with pytest.raises(EngineError) as caught:
        find_components(tmp_path, tmp_path / "q.safetensors")
    text = str(caught.value)  # an empty file where ComfyUI's VAE goes: named, as cut short
    assert caught.value.code is ErrorCode.CORRUPT_FILE
    assert "qwen_image_vae.safetensors" in text and "truncated" in text
    (tmp_path / COMPONENTS_FOLDER / "qwen_image_vae.safetensors").unlink()
    with pytest.raises(EngineError) as caught:
        find_components(tmp_path, tmp_path / "q.safetensors")
    text = str(caught.value)
    assert caught.value.code is ErrorCode.UNKNOWN_FILE
    assert "vae/" in text and "text_encoder/" in text and "qwen_image_vae.safetensors" in text


def test_an_fp8_file_stays_fp8_and_renders(build: QwenImageBuild, generator: Generator, tmp_path: Path) -> None:
    fp8 = build_qwen_image(tmp_path, seed=2, dtype="fp8")
    target = build.transformer.parent / fp8.transformer.name
    shutil.copy(fp8.transformer, target)
    try:
        loaded = RUNTIME.load(target, device="cpu", dtype="float32", model_root=build.transformer.parent)
        assert loaded.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
        assert generator.run(recipe(model=target.name, steps=2)).images[0].startswith(b"\x89PNG")
    finally:
        target.unlink()


def test_memory_plan_for_the_real_sizes() -> None:
    # 20.4 B weights and Qwen2.5-VL 7B (16.6 GB in bf16) on a 24 GB card: fp8, encoder on the CPU.
    plan = memory_plan(device="cuda", budget=24 * GIB, transformer_bytes=2 * 20_400_000_000,
                       text_encoder_bytes=16_600_000_000, file_storage="bfloat16", dtype="bfloat16")  # fmt: skip
    assert (plan.text_encoders, plan.transformer_storage) == ("cpu", "float8_e4m3fn")
    plan = memory_plan(device="cuda", budget=139 * GIB, transformer_bytes=2 * 20_400_000_000,
                       text_encoder_bytes=16_600_000_000, file_storage="bfloat16", dtype="bfloat16")  # fmt: skip
    assert (plan.text_encoders, plan.transformer_storage) == ("device", "bfloat16")


def test_true_cfg_reads_the_negative_prompt_and_cfg_1_does_not(generator: Generator) -> None:
    image = _pixels(generator.run(recipe()).images[0])
    assert _pixels(generator.run(recipe(negative_prompt="rain")).images[0]) != image
    one = recipe(cfg_scale=1.0)
    assert _pixels(generator.run(one).images[0]) == _pixels(generator.run(replace(one, negative_prompt="rain")).images[0])


def test_a_lora_changes_the_image_and_weight_zero_gives_the_base_bit_for_bit(generator: Generator) -> None:
    plain = _pixels(generator.run(recipe(seed=9)).images[0])
    assert _pixels(generator.run(recipe(seed=9, loras=(LoraRef("a.safetensors", 0.8),))).images[0]) != plain
    assert _pixels(generator.run(recipe(seed=9, loras=(LoraRef("a.safetensors", 0.0),))).images[0]) == plain
    assert _pixels(generator.run(recipe(seed=9)).images[0]) == plain


def test_a_zimage_lora_is_refused_before_any_step(generator: Generator) -> None:
    events: list[tuple[int, int]] = []
    with pytest.raises(EngineError) as caught:
        generator.run(recipe(loras=(LoraRef("zimage.safetensors", 1.0),)), on_step=lambda d, t: events.append((d, t)))
    assert caught.value.code is ErrorCode.ARCH_MISMATCH and "Z-Image" in str(caught.value)
    assert events == []


def _pair(out: int, inner: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(RANK, inner, generator=g) * 0.1, torch.randn(out, RANK, generator=g) * 0.1


MODULES = ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.add_k_proj", "transformer_blocks.1.img_mlp.net.0.proj",
           "transformer_blocks.1.txt_mod.1", "transformer_blocks.0.attn.to_out.0", "img_in", "proj_out")  # fmt: skip


@pytest.mark.parametrize(
    ("name_of", "down", "up", "alpha", "layout"),
    [
        (lambda m: "lora_unet_" + m.replace(".", "_"), "lora_down", "lora_up", 2.0, "kohya"),  # musubi-tuner
        (lambda m: m, "lora_down", "lora_up", 8.0, "bare"),  # Lightning
        (lambda m: "transformer." + m, "lora_A", "lora_B", None, "diffusers"),
        (lambda m: "diffusion_model." + m, "lora_A", "lora_B", 1.0, "comfyui"),  # ComfyUI / ai-toolkit
    ],
)
def test_each_layout_merges_as_its_tool_does(pipe, tmp_path: Path, name_of, down: str, up: str, alpha, layout: str) -> None:
    clean = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    state, expected = {}, dict(clean)
    for i, module in enumerate(MODULES):
        out, inner = clean[f"{module}.weight"].shape
        d, u = _pair(out, inner, i)
        name = name_of(module)
        state[f"{name}.{down}.weight"], state[f"{name}.{up}.weight"] = d, u
        if alpha is not None:
            state[f"{name}.alpha"] = torch.tensor(alpha)
        expected[f"{module}.weight"] = clean[f"{module}.weight"] + 0.7 * ((alpha or RANK) / RANK) * (u @ d)
    save_file(state, str(tmp_path / "l.safetensors"))
    lora = read_qwen_lora(tmp_path / "l.safetensors", label="l", sha256="l" * 64)
    bound = bind_qwen_lora(lora, pipe, model_name="tiny-qwen")
    assert lora.layout == layout and len(bound.targets) == len(MODULES)
    WeightPatcher(pipe).apply([StackEntry(bound, 0.7)], PATCHED)
    state_now = pipe.transformer.state_dict()
    for key, tensor in expected.items():
        assert torch.allclose(state_now[key], tensor, atol=ATOL), key


def test_lokr_merges_as_lycoris_does(pipe, tmp_path: Path) -> None:
    from lycoris.functional.lokr import diff_weight

    weight = pipe.transformer.transformer_blocks[0].attn.to_q.weight
    clean = weight.detach().clone()
    g = torch.Generator().manual_seed(3)
    w1, w2 = torch.randn(4, 4, generator=g), torch.randn(8, 8, generator=g) * 0.1
    save_file({"lycoris_transformer_blocks_0_attn_to_q.lokr_w1": w1, "lycoris_transformer_blocks_0_attn_to_q.lokr_w2": w2},
              str(tmp_path / "k.safetensors"))  # fmt: skip
    bound = bind_qwen_lora(read_qwen_lora(tmp_path / "k.safetensors", label="k", sha256="k" * 64), pipe, model_name="q")
    WeightPatcher(pipe).apply([StackEntry(bound, 0.5)], PATCHED)
    delta = diff_weight(w1, None, None, w2, None, None, None, gamma=1.0, backend="torch")
    assert torch.allclose(weight, clean + 0.5 * delta.reshape(clean.shape), atol=ATOL)


def test_a_lora_of_the_real_width_is_refused_on_a_cut_model(pipe, tmp_path: Path) -> None:
    d, u = _pair(3072, 3072, 1)
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": d,
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": u}, str(tmp_path / "w.safetensors"))  # fmt: skip
    with pytest.raises(EngineError) as caught:
        bind_qwen_lora(read_qwen_lora(tmp_path / "w.safetensors", label="w", sha256="w" * 64), pipe, model_name="q")
    assert caught.value.code is ErrorCode.ARCH_MISMATCH and "width 32" in str(caught.value)
