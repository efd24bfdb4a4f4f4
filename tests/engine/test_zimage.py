"""Z-Image (issue 19): recognition, loading every published layout, LoRAs in every trainer's
layout merged with that tool's maths, and images through the engine's own generator.

The expected merges are computed here from the file's tensors with each tool's formula
(sd-scripts/musubi: ΔW = up·down·alpha/rank, merged into the *fused* ``qkv`` of the official
layout, then split as diffusers' converter splits it; PEFT: B·A·alpha/r; LyCORIS LoKr:
``lycoris.functional.lokr.diff_weight``), never read back from the engine.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine import arch
from engine.arch.runtime import Runtime
from engine.arch.zimage.convert import to_diffusers, to_original
from engine.arch.zimage.lora_keys import bind_zimage_lora, read_zimage_lora
from engine.arch.zimage.pipeline import COMPONENTS_FOLDER, RUNTIME, find_components
from engine.generate import Generator
from engine.inspect import inspect_file
from engine.patcher import PATCHED, StackEntry, WeightPatcher
from engine.protocol import EngineError, ErrorCode, LoraRef, Recipe
from sandbox.zimage_builder import ZImageBuild, build_zimage, write_kohya_lora
from tests import dit_files

RANK = 4
ATOL = 1e-5


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> ZImageBuild:
    return build_zimage(tmp_path_factory.mktemp("zimage"), seed=3)


@pytest.fixture(scope="module")
def folders(build: ZImageBuild, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("zimage-engine")
    models, loras = root / "models", root / "loras"
    (models / COMPONENTS_FOLDER).mkdir(parents=True)
    loras.mkdir()
    for part in (build.vae, build.text_encoder):
        shutil.copy(part, models / COMPONENTS_FOLDER / part.name)
    shutil.copytree(build.tokenizer, models / COMPONENTS_FOLDER / "tokenizer")
    shutil.copy(build.transformer, models / "z_image_turbo_bf16.safetensors")
    write_kohya_lora(build.transformer, loras / "a.safetensors", seed=1)
    write_kohya_lora(build.transformer, loras / "b.safetensors", seed=2)
    dit_files.flux_kohya_lora(loras / "flux.safetensors")
    return models, loras


@pytest.fixture(scope="module")
def generator(folders: tuple[Path, Path]) -> Generator:
    return Generator(*folders)


@pytest.fixture
def pipe(build: ZImageBuild):
    """A fresh float32 pipeline per test: the patcher changes weights in place."""
    return RUNTIME.load(build.folder, device="cpu", dtype="float32")


def recipe(**changes: object) -> Recipe:
    base = Recipe(model="z_image_turbo_bf16.safetensors", prompt="a lighthouse", width=64, height=64, steps=8,
                  sampler="Euler", cfg_scale=1.0, seed=5)  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


# --- recognition ---------------------------------------------------------------------------


def test_checkpoints_and_folders_are_recognised_as_zimage(build: ZImageBuild, tmp_path: Path) -> None:
    assert inspect_file(build.transformer).architecture == "zimage"
    info = inspect_file(build.transformer)
    assert info.kind == "checkpoint" and info.cannot_run is None
    comfy = tmp_path / "comfy.safetensors"  # a ComfyUI save: model.diffusion_model. before every key
    from safetensors import safe_open

    with safe_open(str(build.transformer), framework="pt") as handle:
        save_file({f"model.diffusion_model.{k}": handle.get_tensor(k) for k in handle.keys()}, str(comfy))
    assert inspect_file(comfy).architecture == "zimage"
    assert inspect_file(build.folder).architecture == "zimage"


@pytest.mark.parametrize(
    "key",
    [
        "lora_unet_layers_0_attention_qkv.lora_down.weight",  # kohya / musubi, official names
        "lora_unet_layers_0_attention_to_q.lora_down.weight",  # kohya names over diffusers'
        "diffusion_model.layers.0.attention.qkv.lora_down.weight",  # ComfyUI
        "diffusion_model.layers.0.attention.to_q.lora_A.weight",  # ai-toolkit
        "transformer.layers.0.attention.to_q.lora_A.weight",  # diffusers
        "base_model.model.layers.0.feed_forward.w1.lora_A.weight",  # PEFT
        "diffusion_model.layers.0.attention.to_q.lokr_w1",  # LyCORIS LoKr (ai-toolkit)
        "lycoris_layers_0_attention_to_q.lokr_w1",  # LyCORIS' own prefix
    ],
)
def test_loras_of_every_layout_are_recognised(tmp_path: Path, key: str) -> None:
    state = {key: torch.zeros(4, 32, dtype=torch.float16)}
    pair = key.replace("lora_down", "lora_up").replace("lora_A", "lora_B").replace("lokr_w1", "lokr_w2")
    state[pair] = torch.zeros(32, 4, dtype=torch.float16)
    save_file(state, str(tmp_path / "l.safetensors"))
    info = inspect_file(tmp_path / "l.safetensors")
    assert (info.kind, info.architecture) == ("lora", "zimage"), (info.kind, info.architecture, info.cannot_run)


def test_civitai_names_map_to_zimage() -> None:
    assert arch.from_base_model("ZImageTurbo") == ("zimage", "turbo", "unknown")
    assert arch.from_base_model("ZImageBase") == ("zimage", "base", "unknown")
    assert arch.from_ecosystem("zimageturbo") == "zimage"
    from bot.sources.refs import ECOSYSTEM_ARCHITECTURES

    assert ECOSYSTEM_ARCHITECTURES["zimageturbo"] == "zimage"
    assert arch.from_metadata({"ss_base_model_version": "zimage"}) == "zimage"
    spec = arch.ARCHITECTURES["zimage"]
    assert spec.steps_for("turbo") == 8 and spec.guidance_for("turbo").kind == "none"
    assert not spec.negative_for("turbo") and spec.negative_for("base")
    assert spec.guidance_for("base").kind == "cfg"


# --- loading ---------------------------------------------------------------------------------


def test_the_converter_is_diffusers_own_and_its_inverse(pipe) -> None:
    from diffusers.loaders.single_file_utils import (
        convert_z_image_transformer_checkpoint_to_diffusers,
    )

    state = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    original = to_original(state)
    assert "layers.0.attention.qkv.weight" in original and "x_embedder.weight" in original
    theirs = convert_z_image_transformer_checkpoint_to_diffusers({k: v.clone() for k, v in original.items()})
    ours = to_diffusers(original)
    assert set(theirs) == set(ours) == set(state)
    assert all(torch.equal(ours[k], theirs[k]) and torch.equal(ours[k], state[k]) for k in state)


def test_single_file_and_folder_hold_the_same_model(generator: Generator, build: ZImageBuild) -> None:
    folder = RUNTIME.load(build.folder, device="cpu", dtype="float32")
    single = _pipe(generator)
    a, b = single.transformer.state_dict(), folder.transformer.state_dict()
    assert set(a) == set(b)
    for key in a:  # the single file is bf16: equal to the folder's weights rounded to bf16
        assert torch.equal(a[key], b[key].to(torch.bfloat16).to(torch.float32)), key
    assert isinstance(arch.runtime_of("zimage"), Runtime)


def test_components_are_loaded_once_and_shared(generator: Generator, folders, tmp_path: Path) -> None:
    models, _ = folders
    other = models / "z_image_copy.safetensors"
    shutil.copy(models / "z_image_turbo_bf16.safetensors", other)
    try:
        first = RUNTIME.load(models / "z_image_turbo_bf16.safetensors", device="cpu", dtype="float32", model_root=models)
        second = RUNTIME.load(other, device="cpu", dtype="float32", model_root=models)
        assert first.text_encoder is second.text_encoder and first.vae is second.vae
        assert first.transformer is not second.transformer
    finally:
        other.unlink()


def test_missing_components_are_named_with_where_to_put_them(build: ZImageBuild, tmp_path: Path) -> None:
    shutil.copy(build.transformer, tmp_path / "z.safetensors")
    with pytest.raises(EngineError) as caught:
        find_components(tmp_path, tmp_path / "z.safetensors")
    assert caught.value.code is ErrorCode.UNKNOWN_FILE
    assert COMPONENTS_FOLDER in str(caught.value) and "qwen" in str(caught.value) and "tokenizer" in str(caught.value)


@pytest.mark.parametrize("dtype", ["fp8", "fp8_scaled"])
def test_fp8_files_load_and_render(build: ZImageBuild, folders, tmp_path: Path, dtype: str) -> None:
    models, _ = folders
    fp8 = build_zimage(tmp_path, seed=3, dtype=dtype)  # type: ignore[arg-type]
    target = models / fp8.transformer.name
    shutil.copy(fp8.transformer, target)
    try:
        pipe = RUNTIME.load(target, device="cpu", dtype="float32", model_root=models)
        reference = RUNTIME.load(build.folder, device="cpu", dtype="float32")
        to_q = pipe.transformer.layers[0].attention.to_q.weight
        ref_q = reference.transformer.layers[0].attention.to_q.weight
        if dtype == "fp8":  # stays fp8 in memory (computed in bf16), exactly the file's values
            assert to_q.dtype == torch.float8_e4m3fn
            assert torch.equal(to_q, ref_q.to(torch.float8_e4m3fn))
        else:  # scaled: dequantised while loading, W = fp8 · scale_weight
            assert to_q.dtype == torch.float32
            scale = ref_q.abs().max() / 448.0
            assert torch.allclose(to_q, (ref_q / scale).to(torch.float8_e4m3fn).float() * scale, rtol=0, atol=1e-6)
            assert float((to_q - ref_q).abs().max().detach()) < 0.07 * float(ref_q.abs().max().detach())
        generator = Generator(*folders)
        png = generator.run(recipe(model=target.name, steps=2)).images[0]
        assert png.startswith(b"\x89PNG")
    finally:
        target.unlink()


# --- LoRAs: each tool's maths --------------------------------------------------------------


def _pair(out: int, inner: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(RANK, inner, generator=g) * 0.1, torch.randn(out, RANK, generator=g) * 0.1


def _apply(pipe, state: dict, tmp_path: Path, weight: float, name: str = "l"):
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    lora = read_zimage_lora(path, label=name, sha256=name * 8)
    bound = bind_zimage_lora(lora, pipe, model_name="tiny-zimage")
    patcher = WeightPatcher(pipe)
    patcher.apply([StackEntry(bound, weight)], PATCHED)
    return lora, bound, patcher


def _assert_transformer(pipe, expected: dict[str, torch.Tensor]) -> None:
    state = pipe.transformer.state_dict()
    assert set(state) == set(expected)
    for key, tensor in expected.items():
        assert torch.allclose(state[key], tensor, atol=ATOL), key


#: Official-layout layers a musubi/kohya Z-Image LoRA trains.
ORIGINAL_LAYERS = ("layers.0.attention.qkv", "layers.0.attention.out", "layers.1.feed_forward.w1",
                   "layers.1.feed_forward.w2", "layers.0.adaLN_modulation.0", "noise_refiner.0.attention.qkv",
                   "context_refiner.0.feed_forward.w3", "x_embedder", "final_layer.linear",
                   "final_layer.adaLN_modulation.1", "cap_embedder.1", "t_embedder.mlp.0")  # fmt: skip


def _original_lora(pipe, layers, key_of, *, alpha: float | None, seed: int = 0):
    """A LoRA on official-layout layers: (file state, {layer: ΔW at strength 1}, base state)."""
    base = to_original({k: v.clone() for k, v in pipe.transformer.state_dict().items()})
    state, deltas = {}, {}
    for i, layer in enumerate(layers):
        out, inner = base[f"{layer}.weight"].shape
        down, up = _pair(out, inner, seed + i)
        down_key, up_key, alpha_key = key_of(layer)
        state[down_key], state[up_key] = down, up
        scale = 1.0
        if alpha is not None:
            state[alpha_key] = torch.tensor(alpha)
            scale = alpha / RANK
        deltas[layer] = scale * (up @ down)
    return state, deltas, base


def _merged(base: dict, deltas: dict, weight: float) -> dict[str, torch.Tensor]:
    """The tool's merge into the official weights, then diffusers' split (its own converter)."""
    from diffusers.loaders.single_file_utils import (
        convert_z_image_transformer_checkpoint_to_diffusers,
    )

    merged = dict(base)
    for layer, delta in deltas.items():
        merged[f"{layer}.weight"] = base[f"{layer}.weight"] + weight * delta
    return convert_z_image_transformer_checkpoint_to_diffusers(merged)


def _kohya(layer: str) -> tuple[str, str, str]:
    name = "lora_unet_" + layer.replace(".", "_")
    return f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"


def _comfy(layer: str) -> tuple[str, str, str]:
    name = f"diffusion_model.{layer}"
    return f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"


def test_kohya_musubi_loras_merge_as_sd_scripts_does(pipe, tmp_path) -> None:
    state, deltas, base = _original_lora(pipe, ORIGINAL_LAYERS, _kohya, alpha=2.0)
    lora, bound, _ = _apply(pipe, state, tmp_path, 0.7)
    assert lora.layout == "kohya"
    assert len(bound.targets) == len(ORIGINAL_LAYERS) + 2 * 2  # each qkv -> to_q, to_k, to_v
    _assert_transformer(pipe, _merged(base, deltas, 0.7))


def test_comfyui_names_merge_the_same(pipe, tmp_path) -> None:
    state, deltas, base = _original_lora(pipe, ORIGINAL_LAYERS, _comfy, alpha=8.0, seed=10)
    lora, _, _ = _apply(pipe, state, tmp_path, 1.3)
    assert lora.layout == "comfyui"
    _assert_transformer(pipe, _merged(base, deltas, 1.3))


@pytest.mark.parametrize(
    ("prefix", "layout", "alpha"),
    [("transformer.", "diffusers", None), ("diffusion_model.", "comfyui", 2.0), ("base_model.model.", "peft", None),
     ("lora_unet_", "kohya", 1.0)],
)
def test_diffusers_names_from_ai_toolkit_peft_and_kohya(pipe, tmp_path, prefix: str, layout: str, alpha) -> None:
    modules = ("layers.0.attention.to_q", "layers.0.attention.to_k", "layers.1.attention.to_out.0",
               "noise_refiner.0.feed_forward.w2", "all_x_embedder.2-1", "all_final_layer.2-1.linear")  # fmt: skip
    clean = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    state, expected = {}, dict(clean)
    for i, module in enumerate(modules):
        out, inner = clean[f"{module}.weight"].shape
        down, up = _pair(out, inner, 40 + i)
        name = prefix + (module.replace(".", "_") if prefix == "lora_unet_" else module)
        if prefix == "lora_unet_":
            state[f"{name}.lora_down.weight"], state[f"{name}.lora_up.weight"] = down, up
        else:
            state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"] = down, up
        if alpha is not None:
            state[f"{name}.alpha"] = torch.tensor(alpha)
        expected[f"{module}.weight"] = clean[f"{module}.weight"] + 0.9 * ((alpha or RANK) / RANK) * (up @ down)
    lora, bound, _ = _apply(pipe, state, tmp_path, 0.9)
    assert lora.layout == layout and len(bound.targets) == len(modules)
    _assert_transformer(pipe, expected)


def test_lycoris_lokr_merges_as_lycoris_does(pipe, tmp_path) -> None:
    from lycoris.functional.lokr import diff_weight

    clean = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    base = to_original(clean)
    g = torch.Generator().manual_seed(7)
    # On the fused qkv (full w1 and w2: scale 1) and on a diffusers-named layer (w2 low-rank).
    out, inner = base["layers.0.attention.qkv.weight"].shape
    w1, w2 = torch.randn(4, 4, generator=g), torch.randn(out // 4, inner // 4, generator=g) * 0.1
    q_out, q_in = clean["layers.1.attention.to_out.0.weight"].shape
    v1 = torch.randn(4, 4, generator=g)
    v2a, v2b = torch.randn(q_out // 4, 2, generator=g) * 0.1, torch.randn(2, q_in // 4, generator=g) * 0.1
    state = {"diffusion_model.layers.0.attention.qkv.lokr_w1": w1, "diffusion_model.layers.0.attention.qkv.lokr_w2": w2,
             "lycoris_layers_1_attention_to_out_0.lokr_w1": v1, "lycoris_layers_1_attention_to_out_0.lokr_w2_a": v2a,
             "lycoris_layers_1_attention_to_out_0.lokr_w2_b": v2b,
             "lycoris_layers_1_attention_to_out_0.alpha": torch.tensor(1.0)}  # fmt: skip
    qkv = diff_weight(w1, None, None, w2, None, None, None, gamma=1.0, backend="torch")
    ffn = diff_weight(v1, None, None, None, v2a, v2b, None, gamma=1.0, backend="torch")  # LyCORIS: alpha / rank
    _apply(pipe, state, tmp_path, 0.8)
    expected = _merged(base, {"layers.0.attention.qkv": qkv.reshape(out, inner)}, 0.8)
    expected["layers.1.attention.to_out.0.weight"] = (clean["layers.1.attention.to_out.0.weight"]
                                                      + 0.8 * ffn.reshape(q_out, q_in))  # fmt: skip
    _assert_transformer(pipe, expected)


def test_weight_zero_and_restore_are_bit_identical(pipe, tmp_path) -> None:
    clean = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    state, _, _ = _original_lora(pipe, ORIGINAL_LAYERS, _kohya, alpha=2.0)
    _, bound, patcher = _apply(pipe, state, tmp_path, 0.0)
    assert all(torch.equal(v, clean[k]) for k, v in pipe.transformer.state_dict().items())
    patcher.apply([StackEntry(bound, 1.0)])
    assert not torch.equal(pipe.transformer.layers[0].attention.to_q.weight, clean["layers.0.attention.to_q.weight"])
    patcher.restore_all()
    assert all(torch.equal(v, clean[k]) for k, v in pipe.transformer.state_dict().items())


def test_a_flux_lora_and_a_lora_of_another_width_are_refused(pipe, tmp_path) -> None:
    with pytest.raises(EngineError) as caught:  # FLUX.1 names: nothing here
        bind_zimage_lora(read_zimage_lora(dit_files.flux_kohya_lora(tmp_path / "f.safetensors"), label="f",
                                          sha256="f" * 64), pipe, model_name="tiny")  # fmt: skip
    assert caught.value.code is ErrorCode.ARCH_MISMATCH and "Z-Image" in str(caught.value)
    down, up = _pair(3 * 3840, 3840, 1)  # the real Z-Image's width on this tiny one
    with pytest.raises(EngineError) as caught:
        _apply(pipe, {"lora_unet_layers_0_attention_qkv.lora_down.weight": down,
                      "lora_unet_layers_0_attention_qkv.lora_up.weight": up}, tmp_path, 1.0)  # fmt: skip
    assert caught.value.code is ErrorCode.ARCH_MISMATCH and "width 32" in str(caught.value)


def test_a_partial_match_is_not_applied(pipe, tmp_path) -> None:
    down, up = _pair(32, 32, 3)
    state = {"transformer.layers.0.attention.to_q.lora_A.weight": down,
             "transformer.layers.0.attention.to_q.lora_B.weight": up,
             "transformer.layers.9.attention.to_q.lora_A.weight": down.clone(),
             "transformer.layers.9.attention.to_q.lora_B.weight": up.clone()}  # fmt: skip
    with pytest.raises(EngineError) as caught:
        _apply(pipe, state, tmp_path, 1.0)
    assert caught.value.code is ErrorCode.LORA_NO_MATCH and "1 of 2" in str(caught.value)


# --- through the generator ---------------------------------------------------------------


def _pipe(generator: Generator):
    generator.run(recipe(steps=1))
    assert generator._last_model is not None
    return generator._last_model.pipe


def _pixels(png: bytes) -> bytes:
    from PIL import Image

    return Image.open(io.BytesIO(png)).tobytes()


def test_turbo_renders_in_eight_steps_without_guidance(generator: Generator) -> None:
    events: list[tuple[int, int]] = []
    result = generator.run(recipe(cfg_scale=7.0), on_step=lambda done, total: events.append((done, total)))
    assert events[-1] == (8, 8)
    pixels = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(io.BytesIO(result.images[0])))
    assert pixels.shape == (64, 64, 3) and pixels.std() > 1
    # Turbo ignores CFG: the same image at any CFG, one row per step.
    assert _pixels(generator.run(recipe(cfg_scale=1.0)).images[0]) == _pixels(result.images[0])
    assert RUNTIME.rows_per_image(recipe(cfg_scale=7.0)) == 1
    assert RUNTIME.rows_per_image(recipe(cfg_scale=5.0, variant="base")) == 2


def test_base_reads_the_negative_prompt_under_cfg(generator: Generator) -> None:
    base = recipe(variant="base", cfg_scale=5.0, steps=2, negative_prompt="fog")
    image = _pixels(generator.run(base).images[0])
    assert _pixels(generator.run(replace(base, negative_prompt="rain")).images[0]) != image
    turbo = recipe(steps=2, negative_prompt="fog")
    assert _pixels(generator.run(turbo).images[0]) == _pixels(generator.run(replace(turbo, negative_prompt="rain")).images[0])


def test_a_two_lora_stack_changes_the_image_and_weight_zero_gives_the_base_bit_for_bit(generator: Generator) -> None:
    plain = _pixels(generator.run(recipe(seed=9)).images[0])
    stacked = recipe(seed=9, loras=(LoraRef("a.safetensors", 0.8), LoraRef("b.safetensors", 0.5)))
    assert _pixels(generator.run(stacked).images[0]) != plain
    assert _pixels(generator.run(recipe(seed=9, loras=(LoraRef("a.safetensors", 0.0),))).images[0]) == plain
    assert _pixels(generator.run(recipe(seed=9)).images[0]) == plain


def test_a_flux_lora_on_zimage_is_refused_before_any_step(generator: Generator) -> None:
    events: list[tuple[int, int]] = []
    with pytest.raises(EngineError) as caught:
        generator.run(recipe(loras=(LoraRef("flux.safetensors", 1.0),)), on_step=lambda d, t: events.append((d, t)))
    assert caught.value.code is ErrorCode.ARCH_MISMATCH
    assert "FLUX.1" in str(caught.value) and "Z-Image" in str(caught.value)
    assert events == []


def test_prompts_go_through_the_chat_template_and_are_cached(generator: Generator) -> None:
    pipe = _pipe(generator)
    encoder = RUNTIME.prompt_encoder(pipe, clip_skip=1, embeddings={})
    hidden, info = encoder.encode("a (red:1.3) fox")
    template = "<|im_start|>user\na red fox<|im_end|>\n<|im_start|>assistant\n"
    assert info.tokens == len(pipe.tokenizer(template).input_ids) == hidden.shape[0]
    assert encoder.encode("a (red:1.3) fox")[0] is hidden  # cached
    with pytest.raises(EngineError) as caught:
        RUNTIME.prompt_encoder(pipe, clip_skip=2, embeddings={})
    assert caught.value.code is ErrorCode.INVALID_RECIPE
