"""FLUX.1 loading from every layout people have, on tiny models built in those layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.arch.flux import convert
from engine.arch.flux.loading import (
    inspect_transformer,
    load_all_in_one,
    load_folder,
    load_from_files,
    transformer_info,
)
from engine.arch.flux.t5_tokenizer import load_t5_tokenizer
from engine.protocol import EngineError, ErrorCode
from sandbox.flux_builder import build_flux, transformer_bfl_state
from tests.engine import _flux

flux_build = _flux.flux_build  # the shared session fixture

COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2")


def _keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def _same_weights(a, b) -> list[str]:
    diffs = []
    for name in COMPONENTS:
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert set(sa) == set(sb), name
        diffs += [f"{name}.{k}" for k in sa if not torch.equal(sa[k], sb[k])]
    return diffs


def test_files_carry_the_real_key_names(flux_build) -> None:
    transformer = set(_keys(flux_build.transformer))
    for key in ("double_blocks.0.img_attn.qkv.weight", "double_blocks.0.txt_mod.lin.weight",
                "single_blocks.0.linear1.weight", "single_blocks.0.modulation.lin.weight", "img_in.weight",
                "txt_in.weight", "time_in.in_layer.weight", "vector_in.out_layer.bias", "guidance_in.in_layer.weight",
                "final_layer.linear.weight", "final_layer.adaLN_modulation.1.weight"):  # fmt: skip
        assert key in transformer
    assert "encoder.down.0.block.0.conv1.weight" in _keys(flux_build.vae)
    assert not any(k.startswith("first_stage_model.") or "quant_conv" in k for k in _keys(flux_build.vae))
    assert "text_model.encoder.layers.0.self_attn.q_proj.weight" in _keys(flux_build.clip_l)
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in _keys(flux_build.t5)
    prefixes = {k.split(".")[0] + "." + (k.split(".")[1] + "." if k.startswith("text_encoders") else "")
                for k in _keys(flux_build.all_in_one)}  # fmt: skip
    assert prefixes == {"model.", "vae.", "text_encoders.clip_l.", "text_encoders.t5xxl."}


def test_bfl_names_match_diffusers_own_converter_at_flux_width() -> None:
    """Our diffusers->BFL writer, read back by diffusers' converter, gives every tensor back.

    diffusers' converter hard-codes width 3072, so this runs at FLUX's real width on the meta
    device (names and shapes), and the values at tiny width below.
    """
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    with torch.device("meta"):
        model = FluxTransformer2DModel(num_layers=2, num_single_layers=2, guidance_embeds=True)
    state = model.state_dict()
    bfl = convert.diffusers_to_bfl(state)
    back = convert_flux_transformer_checkpoint_to_diffusers({f"model.diffusion_model.{k}": v for k, v in bfl.items()})
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in state.items()}
    ours = convert.bfl_to_diffusers(bfl)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in state.items()}


def test_bfl_values_match_diffusers_converter(flux_build) -> None:
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    with safe_open(str(flux_build.transformer), framework="pt") as handle:
        bfl = {k: handle.get_tensor(k).float() for k in handle.keys()}
    ours = convert.bfl_to_diffusers(bfl)
    # diffusers splits linear1 at (3072, 3072, 3072, 12288): give it rows of that size.
    wide = dict(bfl)
    width = bfl["img_in.weight"].shape[0]
    wide["single_blocks.0.linear1.weight"] = torch.randn(4 * 3072 + 3 * 3072, width)
    wide["single_blocks.0.linear1.bias"] = torch.randn(4 * 3072 + 3 * 3072)
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(wide))
    linear1 = {"attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"}
    for key, tensor in theirs.items():
        if key.startswith("single_transformer_blocks.0.") and key.rsplit(".", 1)[0].split(".", 2)[2] in linear1:
            continue
        assert torch.equal(tensor, ours[key]), key
    parts = wide["single_blocks.0.linear1.weight"].split(list(convert.split_sizes("linear1", 3072, 12288)))
    for name, part in zip(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), parts, strict=True):
        assert torch.equal(theirs[f"single_transformer_blocks.0.{name}.weight"], part)


def test_every_layout_loads_the_same_weights(flux_build) -> None:
    b = flux_build
    folder = load_folder(b.folder, dtype=torch.bfloat16)
    files = load_from_files(b.transformer, vae=b.vae, clip_l=b.clip_l, t5=b.t5, dtype=torch.bfloat16)
    aio = load_all_in_one(b.all_in_one, dtype=torch.bfloat16)
    assert _same_weights(folder, files) == []
    assert _same_weights(folder, aio) == []
    assert files.transformer.config.guidance_embeds and type(files.tokenizer_2).__name__.startswith("T5Tokenizer")
    assert files.scheduler.config.use_dynamic_shifting


def test_config_is_read_from_tensors_for_other_depths_and_variants(tmp_path) -> None:
    build = build_flux(tmp_path, "schnell", seed=2, double=2, single=3, heads=3)
    info = inspect_transformer(build.transformer)
    assert (info.variant, info.width, info.mlp_hidden) == ("schnell", 48, 192)
    assert (info.config["num_layers"], info.config["num_single_layers"], info.config["num_attention_heads"]) == (2, 3, 3)
    pipe = load_from_files(build.transformer, vae=build.vae, clip_l=build.clip_l, t5=build.t5, dtype=torch.float32)
    assert not pipe.transformer.config.guidance_embeds
    assert not pipe.scheduler.config.use_dynamic_shifting and pipe.scheduler.config.shift == 1.0
    assert inspect_transformer(build.all_in_one).variant == "schnell"


def test_fill_and_fp8_are_told_from_the_header() -> None:
    shapes = {k: tuple(v.shape) for k, v in _meta_bfl(in_channels=384).items()}
    assert transformer_info(shapes).variant == "fill"
    assert transformer_info(shapes).config["in_channels"] == 384 and transformer_info(shapes).config["out_channels"] == 64


def _meta_bfl(**config) -> dict:
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True, out_channels=64, **config)
    return convert.diffusers_to_bfl(model.state_dict())


def test_fp8_weights_stay_fp8_and_compute_like_bf16(tmp_path) -> None:
    build = build_flux(tmp_path, "dev", seed=3, dtype="fp8")
    assert inspect_transformer(build.transformer).storage == "float8_e4m3fn"
    fp8 = load_from_files(build.transformer, vae=build.vae, clip_l=build.clip_l, t5=build.t5, dtype=torch.bfloat16)
    assert fp8.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    # The same values in bf16 (fp8 -> bf16 is exact): each layer computes with them.
    with safe_open(str(build.transformer), framework="pt") as handle:
        upcast = {k: handle.get_tensor(k).to(torch.bfloat16) for k in handle.keys()}
    save_file(upcast, str(tmp_path / "bf16.safetensors"))
    bf16 = load_from_files(tmp_path / "bf16.safetensors", vae=build.vae, clip_l=build.clip_l, t5=build.t5,
                           dtype=torch.bfloat16)  # fmt: skip
    inputs = _transformer_inputs(bf16.transformer)
    with torch.no_grad():
        expected = bf16.transformer(**inputs).sample
        got = fp8.transformer(**inputs).sample
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)


def _transformer_inputs(model) -> dict:
    c = model.config
    g = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(1, 16, c.in_channels, generator=g).to(torch.bfloat16),
        "encoder_hidden_states": torch.randn(1, 8, c.joint_attention_dim, generator=g).to(torch.bfloat16),
        "pooled_projections": torch.randn(1, c.pooled_projection_dim, generator=g).to(torch.bfloat16),
        "timestep": torch.tensor([0.5], dtype=torch.bfloat16),
        "guidance": torch.tensor([3.5], dtype=torch.bfloat16) if c.guidance_embeds else None,
        "img_ids": torch.zeros(16, 3),
        "txt_ids": torch.zeros(8, 3),
    }


def test_only_safetensors_and_whole_bundles(flux_build, tmp_path) -> None:
    pickle = tmp_path / "flux1-dev.ckpt"
    pickle.write_bytes(b"not opened")
    with pytest.raises(EngineError) as error:
        load_from_files(pickle, vae=flux_build.vae, clip_l=flux_build.clip_l, t5=flux_build.t5, dtype=torch.float32)
    assert error.value.code == ErrorCode.NOT_SAFETENSORS
    with pytest.raises(EngineError) as error:
        load_all_in_one(flux_build.transformer, dtype=torch.float32)
    assert error.value.code == ErrorCode.UNSUPPORTED_FORMAT and "VAE" in str(error.value)


def test_shipped_t5_vocabulary_gives_the_reference_ids() -> None:
    tokenizer = load_t5_tokenizer()
    assert tokenizer("Hello world").input_ids == [8774, 296, 1]
    assert len(tokenizer) == 32100
    long = " ".join(["a red fox in the snow"] * 60)
    assert len(tokenizer(long).input_ids) > 300  # nothing here cuts at 77


def test_bfl_round_trip_is_exact(flux_build) -> None:
    from sandbox.flux_builder import build_components

    transformer = build_components("dev", 1)["transformer"]
    bfl = transformer_bfl_state(transformer)
    back = convert.bfl_to_diffusers(bfl)
    state = transformer.state_dict()
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_a_transformer_saved_with_diffusers_names_loads_too(flux_build, tmp_path) -> None:
    with safe_open(str(flux_build.folder / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as handle:
        state = {k: handle.get_tensor(k).to(torch.bfloat16) for k in handle.keys()}
    save_file(state, str(tmp_path / "flux-finetune.safetensors"))
    info = inspect_transformer(tmp_path / "flux-finetune.safetensors")
    assert (info.variant, info.width, info.storage) == ("dev", 32, "bfloat16")
    b = flux_build
    pipe = load_from_files(tmp_path / "flux-finetune.safetensors", vae=b.vae, clip_l=b.clip_l, t5=b.t5,
                           dtype=torch.bfloat16)  # fmt: skip
    reference = load_folder(b.folder, dtype=torch.bfloat16)
    assert _same_weights(pipe, reference) == []


def test_fp16_files_load_in_the_dtype_asked_for(tmp_path) -> None:
    build = build_flux(tmp_path, "dev", seed=6, dtype="fp16")
    assert inspect_transformer(build.transformer).storage == "float16"
    assert inspect_transformer(build.all_in_one).storage == "float16"
    pipe = load_all_in_one(build.all_in_one, dtype=torch.bfloat16)
    assert {p.dtype for p in pipe.transformer.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in pipe.text_encoder_2.parameters()} == {torch.bfloat16}
