"""FLUX.1 LoRAs in every layout, applied by the project's weight patcher on a tiny FLUX model.

Each test writes a LoRA the way its tool lays it out, applies it with ``WeightPatcher`` and
checks the merged weights against the tool's own merge: kohya, ComfyUI and XLabs add ΔW to
BFL's *fused* weights (``qkv``, ``linear1``), so the expected model is built by merging into
the BFL state and converting that to diffusers' layout (converter checked against diffusers'
in test_flux_loading).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.arch.flux.convert import bfl_to_diffusers, diffusers_to_bfl
from engine.arch.flux.loading import load_folder
from engine.arch.flux.lora_keys import bind_flux_lora, read_flux_lora
from engine.patcher import PATCHED, UNFUSED, StackEntry, WeightPatcher
from engine.protocol import EngineError, ErrorCode
from tests.engine import _flux

flux_build = _flux.flux_build  # the shared session fixture
RANK = 4
ATOL = 1e-5


@pytest.fixture
def pipe(flux_build):
    """A fresh float32 pipeline per test: the patcher changes weights in place."""
    return load_folder(flux_build.folder, dtype=torch.float32)


def _pair(out: int, inner: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(RANK, inner, generator=g) * 0.1, torch.randn(out, RANK, generator=g) * 0.1


def _bfl(pipe) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in diffusers_to_bfl(pipe.transformer.state_dict()).items()}


def _apply(pipe, state: dict, tmp_path: Path, weight: float, mode: str = PATCHED, name: str = "l"):
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    lora = read_flux_lora(path, label=name, sha256=name * 8)
    bound = bind_flux_lora(lora, pipe, model_name="tiny-flux")
    patcher = WeightPatcher(pipe)
    patcher.apply([StackEntry(bound, weight)], mode)
    return lora, bound, patcher


def _assert_transformer(pipe, expected: dict[str, torch.Tensor]) -> None:
    state = pipe.transformer.state_dict()
    assert set(state) == set(expected)
    for key, tensor in expected.items():
        assert torch.allclose(state[key], tensor, atol=ATOL), key


#: BFL layers a kohya FLUX LoRA trains (with train_blocks=all and the in/out layers).
KOHYA_LAYERS = ("double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.qkv", "double_blocks.0.img_attn.proj",
                "double_blocks.0.txt_attn.proj", "double_blocks.0.img_mlp.0", "double_blocks.0.img_mlp.2",
                "double_blocks.0.txt_mlp.0", "double_blocks.0.txt_mlp.2", "double_blocks.0.img_mod.lin",
                "double_blocks.0.txt_mod.lin", "single_blocks.0.linear1", "single_blocks.0.linear2",
                "single_blocks.0.modulation.lin", "img_in", "txt_in", "time_in.in_layer", "time_in.out_layer",
                "vector_in.in_layer", "guidance_in.in_layer", "final_layer.linear",
                "final_layer.adaLN_modulation.1")  # fmt: skip


def _bfl_lora(pipe, layers, key_of, *, alpha: float | None, seed: int = 0):
    """A LoRA on BFL layers: (file state, {bfl layer: ΔW the tool merges at strength 1})."""
    base = _bfl(pipe)
    state: dict[str, torch.Tensor] = {}
    deltas = {}
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
    merged = dict(base)
    for layer, delta in deltas.items():
        merged[f"{layer}.weight"] = base[f"{layer}.weight"] + weight * delta
    return bfl_to_diffusers(merged)


def _kohya_key(layer: str) -> tuple[str, str, str]:
    name = "lora_unet_" + layer.replace(".", "_")
    return f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"


def test_kohya_fused_and_in_out_layers_merge_as_sd_scripts_does(pipe, tmp_path) -> None:
    state, deltas, base = _bfl_lora(pipe, KOHYA_LAYERS, _kohya_key, alpha=2.0)
    # and its CLIP-L part
    q = dict(pipe.text_encoder.named_modules())[next(n for n, _ in pipe.text_encoder.named_modules() if n.endswith("layers.0.self_attn.q_proj"))]
    down, up = _pair(q.out_features, q.in_features, 99)
    te = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    state.update({f"{te}.lora_down.weight": down, f"{te}.lora_up.weight": up, f"{te}.alpha": torch.tensor(8.0)})
    clean_q = q.weight.detach().clone()
    lora, bound, _ = _apply(pipe, state, tmp_path, 0.7)
    assert lora.layout == "kohya"
    assert len(bound.targets) == len(KOHYA_LAYERS) + 2 * 2 + 3 + 1  # qkv x2 -> 3 each, linear1 -> 4
    _assert_transformer(pipe, _merged(base, deltas, 0.7))
    assert torch.allclose(q.weight, clean_q + 0.7 * (8.0 / RANK) * (up @ down), atol=ATOL)


def test_comfyui_bfl_names(pipe, tmp_path) -> None:
    layers = ("double_blocks.0.img_attn.qkv", "single_blocks.0.linear1", "final_layer.adaLN_modulation.1")

    def key(layer: str) -> tuple[str, str, str]:
        return (f"diffusion_model.{layer}.lora_A.weight", f"diffusion_model.{layer}.lora_B.weight",
                f"diffusion_model.{layer}.alpha")  # fmt: skip

    state, deltas, base = _bfl_lora(pipe, layers, key, alpha=1.0, seed=10)
    lora, _, _ = _apply(pipe, state, tmp_path, 1.3)
    assert lora.layout == "comfyui"
    _assert_transformer(pipe, _merged(base, deltas, 1.3))


def test_xlabs_processor_loras(pipe, tmp_path) -> None:
    base = _bfl(pipe)
    width = base["img_in.weight"].shape[0]
    state, deltas = {}, {}
    for i, (key, layer, rows) in enumerate((
        ("double_blocks.0.processor.qkv_lora1", "double_blocks.0.img_attn.qkv", 3 * width),
        ("double_blocks.0.processor.qkv_lora2", "double_blocks.0.txt_attn.qkv", 3 * width),
        ("double_blocks.0.processor.proj_lora1", "double_blocks.0.img_attn.proj", width),
        ("single_blocks.0.processor.qkv_lora", "single_blocks.0.linear1", 3 * width),
    )):  # fmt: skip
        down, up = _pair(rows, width, 20 + i)
        state[f"{key}.down.weight"], state[f"{key}.up.weight"] = down, up
        full = torch.zeros_like(base[f"{layer}.weight"])
        full[:rows] = up @ down  # XLabs adds its LoRA to these output rows, scale 1
        deltas[layer] = full
    lora, _, _ = _apply(pipe, state, tmp_path, 0.9)
    assert lora.layout == "xlabs"
    _assert_transformer(pipe, _merged(base, deltas, 0.9))


def test_diffusers_peft_and_kohya_diffusers_names(pipe, tmp_path) -> None:
    modules = dict(pipe.transformer.named_modules())
    names = ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.add_k_proj",
             "single_transformer_blocks.0.proj_mlp", "x_embedder", "norm_out.linear")  # fmt: skip
    clean = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    state, expected = {}, dict(clean)
    for i, name in enumerate(names):
        w = modules[name].weight
        down, up = _pair(w.shape[0], w.shape[1], 40 + i)
        if i % 2:  # kohya, diffusers names
            flat = "lora_unet_" + name.replace(".", "_")
            state.update({f"{flat}.lora_down.weight": down, f"{flat}.lora_up.weight": up,
                          f"{flat}.alpha": torch.tensor(2.0)})  # fmt: skip
            expected[f"{name}.weight"] = clean[f"{name}.weight"] + 0.5 * (2.0 / RANK) * (up @ down)
        else:  # diffusers / PEFT / ai-toolkit: lora_A/lora_B, scale 1
            state.update({f"transformer.{name}.lora_A.weight": down, f"transformer.{name}.lora_B.weight": up})
            expected[f"{name}.weight"] = clean[f"{name}.weight"] + 0.5 * (up @ down)
    _apply(pipe, state, tmp_path, 0.5)
    _assert_transformer(pipe, expected)


def test_lokr_on_a_fused_layer_is_sliced(pipe, tmp_path) -> None:
    from lycoris.functional.lokr import diff_weight

    base = _bfl(pipe)
    out, inner = base["double_blocks.0.img_attn.qkv.weight"].shape
    g = torch.Generator().manual_seed(7)
    w1, w2 = torch.randn(4, 4, generator=g), torch.randn(out // 4, inner // 4, generator=g) * 0.1
    state = {"lora_unet_double_blocks_0_img_attn_qkv.lokr_w1": w1, "lora_unet_double_blocks_0_img_attn_qkv.lokr_w2": w2}
    delta = diff_weight(w1, None, None, w2, None, None, None, gamma=1.0, backend="torch")
    assert torch.allclose(delta, torch.kron(w1, w2))
    _apply(pipe, state, tmp_path, 0.8)
    _assert_transformer(pipe, _merged(base, {"double_blocks.0.img_attn.qkv": delta.reshape(out, inner)}, 0.8))


def test_weight_zero_and_restore_are_bit_identical(pipe, tmp_path) -> None:
    clean = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    state, _, _ = _bfl_lora(pipe, KOHYA_LAYERS, _kohya_key, alpha=2.0)
    _, bound, patcher = _apply(pipe, state, tmp_path, 0.0)
    assert all(torch.equal(v, clean[k]) for k, v in pipe.transformer.state_dict().items())
    patcher.apply([StackEntry(bound, 1.0)])
    assert not torch.equal(pipe.transformer.transformer_blocks[0].attn.to_q.weight, clean["transformer_blocks.0.attn.to_q.weight"])
    patcher.restore_all()
    assert all(torch.equal(v, clean[k]) for k, v in pipe.transformer.state_dict().items())


def test_unfused_path_gives_the_patched_output(pipe, tmp_path, flux_build) -> None:
    state, _, _ = _bfl_lora(pipe, KOHYA_LAYERS, _kohya_key, alpha=2.0)
    inputs = _inputs(pipe.transformer)
    _, bound, patcher = _apply(pipe, state, tmp_path, 0.6)
    with torch.no_grad():
        patched = pipe.transformer(**inputs).sample
        patcher.apply([StackEntry(bound, 0.6)], UNFUSED)
        unfused = pipe.transformer(**inputs).sample
        patcher.restore_all()
        plain = pipe.transformer(**inputs).sample
    assert torch.allclose(patched, unfused, atol=1e-4)
    assert not torch.allclose(patched, plain, atol=1e-3)


def _inputs(model) -> dict:
    c = model.config
    g = torch.Generator().manual_seed(0)
    return {"hidden_states": torch.randn(1, 16, c.in_channels, generator=g),
            "encoder_hidden_states": torch.randn(1, 8, c.joint_attention_dim, generator=g),
            "pooled_projections": torch.randn(1, c.pooled_projection_dim, generator=g),
            "timestep": torch.tensor([0.5]), "guidance": torch.tensor([3.5]),
            "img_ids": torch.zeros(16, 3), "txt_ids": torch.zeros(8, 3)}  # fmt: skip


def test_a_lora_for_another_width_is_refused(pipe, tmp_path) -> None:
    width = pipe.transformer.x_embedder.out_features
    other = 2 * width
    down, up = _pair(3 * other, other, 1)
    state = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": down,
             "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": up}  # fmt: skip
    with pytest.raises(EngineError) as error:
        _apply(pipe, state, tmp_path, 1.0)
    assert error.value.code == ErrorCode.ARCH_MISMATCH and f"width {width}" in str(error.value)


def test_an_sdxl_lora_is_refused_as_another_architecture(pipe, tmp_path) -> None:
    down, up = _pair(64, 64, 2)
    name = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    with pytest.raises(EngineError) as error:
        _apply(pipe, {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}, tmp_path, 1.0)
    assert error.value.code == ErrorCode.ARCH_MISMATCH and "FLUX.1" in str(error.value)


def test_a_partial_match_says_how_much_and_is_not_applied(pipe, tmp_path) -> None:
    state, _, _ = _bfl_lora(pipe, ("double_blocks.0.img_attn.proj", "single_blocks.0.linear2"), _kohya_key, alpha=None)
    state["lora_unet_double_blocks_0_img_attn_bogus.lora_down.weight"] = torch.zeros(RANK, 8)
    state["lora_unet_double_blocks_0_img_attn_bogus.lora_up.weight"] = torch.zeros(8, RANK)
    clean = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    with pytest.raises(EngineError) as error:
        _apply(pipe, state, tmp_path, 1.0)
    assert error.value.code == ErrorCode.LORA_NO_MATCH and "2 of 3 layers matched" in str(error.value)
    assert all(torch.equal(v, clean[k]) for k, v in pipe.transformer.state_dict().items())


def test_xlabs_single_block_proj_is_named_unsupported(pipe, tmp_path) -> None:
    width = pipe.transformer.x_embedder.out_features
    down, up = _pair(width, width, 3)
    state = {"single_blocks.0.processor.proj_lora.down.weight": down, "single_blocks.0.processor.proj_lora.up.weight": up}
    with pytest.raises(EngineError) as error:
        _apply(pipe, state, tmp_path, 1.0)
    assert error.value.code == ErrorCode.UNSUPPORTED_FORMAT and "XLabs" in str(error.value)


def test_peft_alpha_from_diffusers_metadata(pipe, tmp_path) -> None:
    import json

    w = pipe.transformer.transformer_blocks[0].attn.to_q.weight
    clean = w.detach().clone()
    down, up = _pair(w.shape[0], w.shape[1], 60)
    state = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": down,
             "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": up}  # fmt: skip
    path = tmp_path / "peft.safetensors"
    save_file(state, str(path), metadata={"lora_adapter_metadata": json.dumps(
        {"transformer.r": RANK, "transformer.lora_alpha": 2 * RANK})})  # fmt: skip
    bound = bind_flux_lora(read_flux_lora(path, label="p", sha256="p" * 64), pipe, model_name="t")
    WeightPatcher(pipe).apply([StackEntry(bound, 1.0)])
    assert torch.allclose(w, clean + 2.0 * (up @ down), atol=ATOL)


def test_full_diff_on_linear1_is_sliced(pipe, tmp_path) -> None:
    base = _bfl(pipe)
    fused = base["single_blocks.0.linear1.weight"]
    g = torch.Generator().manual_seed(70)
    diff = torch.randn(fused.shape, generator=g) * 0.01
    _apply(pipe, {"lora_unet_single_blocks_0_linear1.diff": diff}, tmp_path, 0.5)
    _assert_transformer(pipe, _merged(base, {"single_blocks.0.linear1": diff}, 0.5))


def test_dora_on_a_fused_layer_is_named_unsupported(pipe, tmp_path) -> None:
    base = _bfl(pipe)
    out, inner = base["double_blocks.0.img_attn.qkv.weight"].shape
    down, up = _pair(out, inner, 80)
    name = "lora_unet_double_blocks_0_img_attn_qkv"
    state = {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.dora_scale": torch.ones(out, 1)}
    with pytest.raises(EngineError) as error:
        _apply(pipe, state, tmp_path, 1.0)
    assert error.value.code == ErrorCode.UNSUPPORTED_FORMAT and "DoRA" in str(error.value)


def test_fp8_weights_take_a_lora_and_restore_exactly(tmp_path) -> None:
    from engine.arch.flux.loading import load_from_files
    from sandbox.flux_builder import build_flux

    build = build_flux(tmp_path / "fp8", "dev", seed=5, dtype="fp8")
    pipe = load_from_files(build.transformer, vae=build.vae, clip_l=build.clip_l, t5=build.t5, dtype=torch.bfloat16)
    q = pipe.transformer.transformer_blocks[0].attn.to_q
    clean = q.weight.detach().clone()
    assert clean.dtype == torch.float8_e4m3fn
    state, deltas, _ = _bfl_lora(pipe, ("double_blocks.0.img_attn.qkv",), _kohya_key, alpha=2.0)
    inputs = {k: (v.to(torch.bfloat16) if v is not None and v.is_floating_point() and k != "img_ids"
                  and k != "txt_ids" else v) for k, v in _inputs(pipe.transformer).items()}  # fmt: skip
    with torch.no_grad():
        plain = pipe.transformer(**inputs).sample
    _, bound, patcher = _apply(pipe, state, tmp_path, 1.0)
    width = q.out_features
    expected = clean.float() + deltas["double_blocks.0.img_attn.qkv"][:width]
    assert q.weight.dtype == torch.float8_e4m3fn
    assert torch.allclose(q.weight.float(), expected, rtol=0.07, atol=2e-3)  # fp8 keeps 3 mantissa bits
    with torch.no_grad():
        patched = pipe.transformer(**inputs).sample
        patcher.apply([StackEntry(bound, 1.0)], UNFUSED)
        unfused = pipe.transformer(**inputs).sample
    assert not torch.equal(patched, plain) and not torch.equal(unfused, plain)
    patcher.restore_all()
    assert torch.equal(q.weight.view(torch.uint8), clean.view(torch.uint8))


def test_loha_on_a_fused_layer_and_a_t5_layer(pipe, tmp_path) -> None:
    from lycoris.functional.loha import diff_weight

    base = _bfl(pipe)
    out, inner = base["double_blocks.0.txt_attn.qkv.weight"].shape
    g = torch.Generator().manual_seed(90)
    hada = {"hada_w1_a": torch.randn(out, 2, generator=g) * 0.3, "hada_w1_b": torch.randn(2, inner, generator=g) * 0.3,
            "hada_w2_a": torch.randn(out, 2, generator=g) * 0.3, "hada_w2_b": torch.randn(2, inner, generator=g) * 0.3}  # fmt: skip
    state = {f"lora_unet_double_blocks_0_txt_attn_qkv.{k}": v for k, v in hada.items()}
    state["lora_unet_double_blocks_0_txt_attn_qkv.alpha"] = torch.tensor(1.0)
    delta = diff_weight(hada["hada_w1_b"], hada["hada_w1_a"], hada["hada_w2_b"], hada["hada_w2_a"], None, None,
                        gamma=1.0 / 2, backend="torch")  # fmt: skip
    closed = (hada["hada_w1_a"] @ hada["hada_w1_b"]) * (hada["hada_w2_a"] @ hada["hada_w2_b"]) / 2
    assert torch.allclose(delta, closed, atol=1e-6)
    t5_q = pipe.text_encoder_2.encoder.block[0].layer[0].SelfAttention.q
    clean_q = t5_q.weight.detach().clone()
    down, up = _pair(t5_q.out_features, t5_q.in_features, 91)
    t5 = "lora_te2_encoder_block_0_layer_0_SelfAttention_q"
    state.update({f"{t5}.lora_down.weight": down, f"{t5}.lora_up.weight": up})
    _apply(pipe, state, tmp_path, 0.4)
    _assert_transformer(pipe, _merged(base, {"double_blocks.0.txt_attn.qkv": delta.reshape(out, inner)}, 0.4))
    assert torch.allclose(t5_q.weight, clean_q + 0.4 * (up @ down), atol=ATOL)


def test_tensors_no_layout_names_are_not_left_out_silently(pipe, tmp_path) -> None:
    state, _, _ = _bfl_lora(pipe, ("double_blocks.0.img_attn.qkv",), lambda layer: (
        f"diffusion_model.{layer}.lora_A.weight", f"diffusion_model.{layer}.lora_B.weight", "x"), alpha=None)  # fmt: skip
    state["diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale"] = torch.ones(16)
    with pytest.raises(EngineError) as error:
        _apply(pipe, state, tmp_path, 1.0)
    assert error.value.code == ErrorCode.UNSUPPORTED_FORMAT and "key_norm.scale" in str(error.value)
