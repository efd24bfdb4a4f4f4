"""FLUX.2 Klein (issue 19): BFL's single file with shared components (the Qwen3 file Z-Image
shares) or a diffusers folder; distilled Klein without guidance in 4 steps, its base model with
CFG; LoRAs in BFL, diffusers and LoKr layouts merged with the tool's maths; a LoRA for the other
size refused as ``arch_mismatch`` before any step; FLUX.2 dev named and refused."""

from __future__ import annotations

import io
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine import arch
from engine.arch.flux2.convert import to_bfl, to_diffusers
from engine.arch.flux2.lora_keys import bind_flux2_lora, read_flux2_lora
from engine.arch.flux2.pipeline import COMPONENTS_FOLDER, RUNTIME
from engine.arch.runtime import Runtime
from engine.generate import Generator
from engine.inspect import inspect_file
from engine.patcher import PATCHED, StackEntry, WeightPatcher
from engine.protocol import EngineError, ErrorCode, LoraRef, Recipe
from engine.support import cannot_run
from sandbox.flux2_builder import Flux2Build, build_klein, write_kohya_lora
from sandbox.zimage_builder import build_zimage

RANK = 4
ATOL = 1e-5


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Flux2Build, Flux2Build]:
    root = tmp_path_factory.mktemp("klein")
    four = build_klein(root / "models", seed=1, size="4b")
    nine = build_klein(root / "nine", seed=2, size="9b")
    shutil.copy(nine.transformer, root / "models" / nine.transformer.name)
    shutil.copy(next(nine.components.glob("qwen*.safetensors")), four.components)
    return four, nine


@pytest.fixture(scope="module")
def generator(builds, tmp_path_factory: pytest.TempPathFactory) -> Generator:
    four, nine = builds
    loras = tmp_path_factory.mktemp("klein-loras")
    write_kohya_lora(four.transformer, loras / "four.safetensors", seed=1)
    write_kohya_lora(nine.transformer, loras / "nine.safetensors", seed=2)
    return Generator(four.transformer.parent, loras)


@pytest.fixture
def pipe(builds):
    return RUNTIME.load(builds[0].folder, device="cpu", dtype="float32")


def recipe(**changes: object) -> Recipe:
    base = Recipe(model="flux-2-klein-4b.safetensors", prompt="a lighthouse", width=64, height=64, steps=4,
                  sampler="Euler", cfg_scale=1.0, seed=5)  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def _pixels(png: bytes) -> bytes:
    from PIL import Image

    return Image.open(io.BytesIO(png)).tobytes()


def test_the_bfl_converter_round_trips_through_diffusers_own(pipe) -> None:
    state = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    bfl = to_bfl(state)
    assert "double_blocks.0.img_attn.qkv.weight" in bfl and "single_blocks.0.linear1.weight" in bfl
    back = to_diffusers(bfl)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_single_files_pick_the_text_encoder_of_their_size_and_match_the_folder(builds, pipe) -> None:
    four, nine = builds
    models = four.transformer.parent
    single = RUNTIME.load(four.transformer, device="cpu", dtype="float32", model_root=models)
    a, b = single.transformer.state_dict(), pipe.transformer.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k].to(torch.bfloat16).float()) for k in a)
    assert single.text_encoder.config.hidden_size == 32
    wide = RUNTIME.load(models / nine.transformer.name, device="cpu", dtype="float32", model_root=models)
    assert wide.text_encoder.config.hidden_size == 48 and single.vae is wide.vae
    assert isinstance(arch.runtime_of("flux2"), Runtime)


def test_the_qwen3_file_is_shared_with_zimage(builds, tmp_path: Path) -> None:
    from engine.arch.zimage.pipeline import RUNTIME as ZIMAGE

    four, _ = builds
    z = build_zimage(tmp_path / "z", seed=1, text_width=32)
    models = tmp_path / "models"
    (models / "zimage-components").mkdir(parents=True)
    shutil.copy(next(four.components.glob("qwen_3_4b*.safetensors")), models / "zimage-components" / "qwen_3_4b.safetensors")
    shutil.copytree(four.components / "tokenizer", models / "zimage-components" / "tokenizer")
    shutil.copy(z.vae, models / "zimage-components" / "ae.safetensors")
    shutil.copytree(four.components / "vae", models / COMPONENTS_FOLDER / "vae")
    shutil.copy(four.transformer, models / four.transformer.name)
    klein = RUNTIME.load(models / four.transformer.name, device="cpu", dtype="float32", model_root=models)
    # Z-Image reads Qwen3-4B too: a transformer reading 32-wide text features takes the same module.
    from sandbox.model_builder import _save
    from sandbox.zimage_builder import build_components, transformer_original_state

    parts = build_components(1, text_width=32)
    _save({k: v.to(torch.bfloat16).contiguous() for k, v in transformer_original_state(parts["transformer"]).items()},
          models / "z.safetensors", {})  # fmt: skip
    zimage = ZIMAGE.load(models / "z.safetensors", device="cpu", dtype="float32", model_root=models)
    assert zimage.text_encoder is klein.text_encoder


def test_distilled_klein_runs_four_steps_without_guidance_and_base_reads_the_negative(generator: Generator) -> None:
    events: list[tuple[int, int]] = []
    plain = generator.run(recipe(cfg_scale=5.0, negative_prompt="fog"), on_step=lambda d, t, e=events: e.append((d, t)))
    assert events[-1] == (4, 4)
    assert _pixels(plain.images[0]) == _pixels(generator.run(recipe(negative_prompt="rain")).images[0])
    base = recipe(variant="klein-4b-base", cfg_scale=4.0, negative_prompt="fog", steps=2)
    assert RUNTIME.rows_per_image(base) == 2 and RUNTIME.rows_per_image(recipe()) == 1
    assert _pixels(generator.run(base).images[0]) != _pixels(generator.run(replace(base, negative_prompt="rain")).images[0])


def test_a_lora_changes_the_image_and_weight_zero_gives_the_base_bit_for_bit(generator: Generator) -> None:
    plain = _pixels(generator.run(recipe(seed=9)).images[0])
    assert _pixels(generator.run(recipe(seed=9, loras=(LoraRef("four.safetensors", 0.8),))).images[0]) != plain
    assert _pixels(generator.run(recipe(seed=9, loras=(LoraRef("four.safetensors", 0.0),))).images[0]) == plain


def test_a_lora_for_the_other_size_is_refused_before_any_step(generator: Generator, builds) -> None:
    _, nine = builds
    for model, lora, widths in (("flux-2-klein-4b.safetensors", "nine.safetensors", "width 32"),
                                (nine.transformer.name, "four.safetensors", "width 48")):  # fmt: skip
        events: list[tuple[int, int]] = []
        with pytest.raises(EngineError) as caught:
            generator.run(recipe(model=model, loras=(LoraRef(lora, 1.0),)), on_step=lambda d, t, e=events: e.append((d, t)))
        assert caught.value.code is ErrorCode.ARCH_MISMATCH and widths in str(caught.value), str(caught.value)
        assert events == []


def _pair(out: int, inner: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(RANK, inner, generator=g) * 0.1, torch.randn(out, RANK, generator=g) * 0.1


def _apply(pipe, state: dict, tmp_path: Path, weight: float):
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "l.safetensors"))
    lora = read_flux2_lora(tmp_path / "l.safetensors", label="l", sha256="l" * 64)
    bound = bind_flux2_lora(lora, pipe, model_name="tiny-klein")
    WeightPatcher(pipe).apply([StackEntry(bound, weight)], PATCHED)
    return lora, bound


BFL_LAYERS = ("double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.qkv", "double_blocks.0.img_mlp.0",
              "double_blocks.0.txt_attn.proj", "single_blocks.0.linear1", "single_blocks.0.linear2", "img_in",
              "double_stream_modulation_img.lin", "final_layer.adaLN_modulation.1")  # fmt: skip


@pytest.mark.parametrize(("prefix", "layout"), [("lora_unet_", "kohya"), ("diffusion_model.", "comfyui")])
def test_bfl_names_merge_as_the_tool_does_into_the_fused_weights(pipe, tmp_path: Path, prefix: str, layout: str) -> None:
    base = to_bfl({k: v.clone() for k, v in pipe.transformer.state_dict().items()})
    state, merged = {}, dict(base)
    for i, layer in enumerate(BFL_LAYERS):
        out, inner = base[f"{layer}.weight"].shape
        down, up = _pair(out, inner, i)
        name = prefix + (layer.replace(".", "_") if prefix == "lora_unet_" else layer)
        down_key, up_key = ("lora_down", "lora_up")
        state[f"{name}.{down_key}.weight"], state[f"{name}.{up_key}.weight"] = down, up
        state[f"{name}.alpha"] = torch.tensor(2.0)
        merged[f"{layer}.weight"] = base[f"{layer}.weight"] + 0.6 * (2.0 / RANK) * (up @ down)
    lora, bound = _apply(pipe, state, tmp_path, 0.6)
    assert lora.layout == layout and len(bound.targets) == len(BFL_LAYERS) + 4  # two qkv -> three each
    expected = to_diffusers(merged)  # diffusers' own converter splits and swaps the merged weights
    now = pipe.transformer.state_dict()
    for key, tensor in expected.items():
        assert torch.allclose(now[key], tensor, atol=ATOL), key


def test_diffusers_names_and_lokr(pipe, tmp_path: Path) -> None:
    from lycoris.functional.lokr import diff_weight

    clean = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    module = "single_transformer_blocks.0.attn.to_qkv_mlp_proj"
    out, inner = clean[f"{module}.weight"].shape
    down, up = _pair(out, inner, 5)
    g = torch.Generator().manual_seed(6)
    w1, w2 = torch.randn(4, 4, generator=g), torch.randn(8, 8, generator=g) * 0.1
    state = {f"transformer.{module}.lora_A.weight": down, f"transformer.{module}.lora_B.weight": up,
             "lycoris_transformer_blocks_0_attn_to_q.lokr_w1": w1, "lycoris_transformer_blocks_0_attn_to_q.lokr_w2": w2}  # fmt: skip
    _apply(pipe, state, tmp_path, 0.5)
    now = pipe.transformer.state_dict()
    assert torch.allclose(now[f"{module}.weight"], clean[f"{module}.weight"] + 0.5 * (up @ down), atol=ATOL)
    kron = diff_weight(w1, None, None, w2, None, None, None, gamma=1.0, backend="torch")
    q = "transformer_blocks.0.attn.to_q.weight"
    assert torch.allclose(now[q], clean[q] + 0.5 * kron.reshape(clean[q].shape), atol=ATOL)


def test_flux2_dev_is_named_and_refused(tmp_path: Path) -> None:
    text = cannot_run("flux2-dev.safetensors", "checkpoint", "flux2", variant="dev")
    assert text is not None and "FLUX.2 dev checkpoint, which this engine does not run yet" in text
    assert cannot_run("klein.safetensors", "checkpoint", "flux2", variant="klein-4b") is None
    from tests import dit_files

    info = inspect_file(dit_files.flux2_bfl_checkpoint(tmp_path / "d.safetensors", width=6144 // 64))
    assert info.architecture == "flux2"
