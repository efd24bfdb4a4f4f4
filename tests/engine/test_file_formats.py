"""Every file format people bring, told apart from its header.

Each file is written here the way its tool writes it: the key names, shapes, dtypes and
metadata of kohya sd-scripts, LyCORIS, OneTrainer (default and OMI), diffusers (current and
attention-processor era), PEFT and textual-inversion trainers, at real SD 1.5 / SDXL layer
widths (768-wide cross-attention for SD 1.5, 2048 for SDXL). Weights are random or zero: only
the header is read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.inspect import inspect_file

SD15_TO_K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"  # 768 -> 320
SD15_CONV = "lora_unet_down_blocks_0_resnets_0_conv1"  # Conv2d 320 -> 320, 3x3
SD15_TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"  # 768 -> 768
SDXL_TO_K = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"  # 2048 -> 640
SDXL_TE1 = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"  # 768 -> 768
SDXL_TE2 = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"  # 1280 -> 1280


def _save(tmp_path: Path, name: str, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return inspect_file(path)


def _pair(name: str, rank: int, fan_in: int, fan_out: int, dtype=torch.float16, kernel: int | None = None):
    down = (rank, fan_in, kernel, kernel) if kernel else (rank, fan_in)
    up = (fan_out, rank, 1, 1) if kernel else (fan_out, rank)
    return {
        f"{name}.lora_down.weight": torch.randn(down).to(dtype),
        f"{name}.lora_up.weight": torch.randn(up).to(dtype),
        f"{name}.alpha": torch.tensor(float(rank) / 2).to(dtype),
    }


def _kohya_meta(**extra: str) -> dict[str, str]:
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": "8",
        "ss_network_alpha": "4",
        "ss_base_model_version": "sd_v1",
        "ss_sd_model_name": "v1-5-pruned-emaonly.safetensors",
        "ss_clip_skip": "2",
        **extra,
    }


# --- kohya -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_kohya_lora_unet_and_text_encoder_in_each_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    state = {**_pair(SD15_TO_K, 8, 768, 320, dtype), **_pair(SD15_TE, 8, 768, 768, dtype)}
    info = _save(tmp_path, "kohya", state, _kohya_meta())
    assert (info.kind, info.lora_format, info.key_format) == ("lora", "lora", "kohya")
    assert (info.architecture, info.rank, info.alpha, info.has_text_encoder) == ("sd15", 8, 4.0, True)
    assert (info.family, info.clip_skip) == ("sd15", 2)


def test_kohya_locon_puts_lora_on_3x3_convs(tmp_path: Path) -> None:
    state = {**_pair(SD15_TO_K, 8, 768, 320), **_pair(SD15_CONV, 4, 320, 320, kernel=3)}
    info = _save(tmp_path, "locon", state, _kohya_meta(ss_network_args=json.dumps({"conv_dim": "4"})))
    assert (info.lora_format, info.key_format, info.rank) == ("locon", "kohya", 8)


def test_a_lora_on_1x1_convs_is_still_plain_lora(tmp_path: Path) -> None:
    state = _pair("lora_unet_down_blocks_0_attentions_0_proj_in", 8, 320, 320, kernel=1)
    state |= _pair(SD15_TO_K, 8, 768, 320)
    assert _save(tmp_path, "c1", state).lora_format == "lora"


def test_lycoris_locon_with_tucker_mid(tmp_path: Path) -> None:
    state = {
        f"{SD15_CONV}.lora_down.weight": torch.randn(4, 320, 1, 1),
        f"{SD15_CONV}.lora_mid.weight": torch.randn(4, 4, 3, 3),
        f"{SD15_CONV}.lora_up.weight": torch.randn(320, 4, 1, 1),
        f"{SD15_CONV}.alpha": torch.tensor(4.0),
        **_pair(SD15_TO_K, 4, 768, 320, torch.float32),
    }
    meta = {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": "locon", "use_tucker": True})}
    info = _save(tmp_path, "tucker", state, meta)
    assert (info.lora_format, info.key_format, info.rank, info.architecture) == ("locon", "kohya", 4, "sd15")


# --- LyCORIS ---------------------------------------------------------------------------------


def test_loha_and_loha_with_tucker(tmp_path: Path) -> None:
    rank = 8
    state = {
        f"{SD15_TO_K}.hada_w1_a": torch.randn(320, rank),
        f"{SD15_TO_K}.hada_w1_b": torch.randn(rank, 768),
        f"{SD15_TO_K}.hada_w2_a": torch.randn(320, rank),
        f"{SD15_TO_K}.hada_w2_b": torch.randn(rank, 768),
        f"{SD15_TO_K}.alpha": torch.tensor(4.0),
        # Tucker on a 3x3 conv: w*_a (rank, out), w*_b (rank, in), t (rank, rank, 3, 3).
        f"{SD15_CONV}.hada_t1": torch.randn(rank, rank, 3, 3),
        f"{SD15_CONV}.hada_w1_a": torch.randn(rank, 320),
        f"{SD15_CONV}.hada_w1_b": torch.randn(rank, 320),
        f"{SD15_CONV}.hada_t2": torch.randn(rank, rank, 3, 3),
        f"{SD15_CONV}.hada_w2_a": torch.randn(rank, 320),
        f"{SD15_CONV}.hada_w2_b": torch.randn(rank, 320),
        f"{SD15_CONV}.alpha": torch.tensor(4.0),
    }
    meta = {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": "loha"})}
    info = _save(tmp_path, "loha", state, meta)
    assert (info.kind, info.lora_format, info.key_format) == ("lora", "loha", "kohya")
    assert (info.rank, info.alpha, info.architecture) == (rank, 4.0, "sd15")


def test_lokr_factorised_and_full_matrix(tmp_path: Path) -> None:
    factorised = {
        f"{SD15_TO_K}.lokr_w1": torch.randn(4, 8),  # out 320 = 4*80, in 768 = 8*96
        f"{SD15_TO_K}.lokr_w2_a": torch.randn(80, 16),
        f"{SD15_TO_K}.lokr_w2_b": torch.randn(16, 96),
        f"{SD15_TO_K}.alpha": torch.tensor(16.0),
    }
    info = _save(tmp_path, "lokr", factorised)
    assert (info.lora_format, info.key_format, info.rank) == ("lokr", "kohya", 16)
    full = {f"{SD15_TO_K}.lokr_w1": torch.randn(4, 8), f"{SD15_TO_K}.lokr_w2": torch.randn(80, 96)}
    info = _save(tmp_path, "lokr-full", full)
    assert (info.lora_format, info.rank) == ("lokr", None)


def test_full_diff_and_ia3(tmp_path: Path) -> None:
    diff = {f"{SD15_TO_K}.diff": torch.randn(320, 768), "lora_unet_conv_in.diff_b": torch.randn(320)}
    assert _save(tmp_path, "full", diff).lora_format == "full"
    ia3 = {
        f"{SD15_TO_K}.weight": torch.zeros(320),
        f"{SD15_TO_K}.on_input": torch.tensor(0),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2.weight": torch.zeros(1280),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2.on_input": torch.tensor(1),
    }
    info = _save(tmp_path, "ia3", ia3)
    assert (info.kind, info.lora_format, info.key_format, info.rank) == ("lora", "ia3", "kohya", None)


def test_dora_on_lora_and_on_loha(tmp_path: Path) -> None:
    state = {**_pair(SD15_TO_K, 8, 768, 320), f"{SD15_TO_K}.dora_scale": torch.randn(1, 768).half()}
    assert _save(tmp_path, "dora", state).lora_format == "dora"
    conv = _pair(SD15_CONV, 4, 320, 320, kernel=3) | {f"{SD15_CONV}.dora_scale": torch.randn(320, 1, 1, 1).half()}
    assert _save(tmp_path, "dora-locon", conv).lora_format == "locon+dora"
    loha = {
        f"{SD15_TO_K}.hada_w1_a": torch.randn(320, 4),
        f"{SD15_TO_K}.hada_w1_b": torch.randn(4, 768),
        f"{SD15_TO_K}.hada_w2_a": torch.randn(320, 4),
        f"{SD15_TO_K}.hada_w2_b": torch.randn(4, 768),
        f"{SD15_TO_K}.dora_scale": torch.randn(320, 1),
    }
    assert _save(tmp_path, "dora-loha", loha).lora_format == "loha+dora"


def test_a_file_mixing_lora_and_loha_names_both(tmp_path: Path) -> None:
    state = _pair(SD15_TE, 4, 768, 768) | {
        f"{SD15_TO_K}.hada_w1_a": torch.randn(320, 4),
        f"{SD15_TO_K}.hada_w1_b": torch.randn(4, 768),
        f"{SD15_TO_K}.hada_w2_a": torch.randn(320, 4),
        f"{SD15_TO_K}.hada_w2_b": torch.randn(4, 768),
    }
    assert _save(tmp_path, "mixed", state).lora_format == "lora+loha"


# --- other key layouts --------------------------------------------------------------------


def test_diffusers_save_lora_weights_layout(tmp_path: Path) -> None:
    prefix = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    te = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    state = {
        f"{prefix}.lora_A.weight": torch.randn(4, 768),
        f"{prefix}.lora_B.weight": torch.randn(640, 4),
        f"{te}.lora_A.weight": torch.randn(4, 768),
        f"{te}.lora_B.weight": torch.randn(768, 4),
    }
    info = _save(tmp_path, "diffusers", state)
    assert (info.lora_format, info.key_format, info.rank, info.architecture) == ("lora", "diffusers", 4, "sd15")


def test_old_diffusers_attention_processor_layout(tmp_path: Path) -> None:
    attn = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"
    state = {
        f"{attn}.to_k_lora.down.weight": torch.randn(4, 768),
        f"{attn}.to_k_lora.up.weight": torch.randn(320, 4),
        f"{attn}.to_q_lora.down.weight": torch.randn(4, 320),
        f"{attn}.to_q_lora.up.weight": torch.randn(320, 4),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight": torch.randn(4, 768),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight": torch.randn(768, 4),
    }
    info = _save(tmp_path, "old", state)
    assert (info.kind, info.lora_format, info.key_format, info.rank, info.architecture) == (
        "lora", "lora", "diffusers_old", 4, "sd15",
    )  # fmt: skip


def test_peft_prefixed_layout(tmp_path: Path) -> None:
    prefix = "base_model.model.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    state = {f"{prefix}.lora_A.weight": torch.randn(16, 768), f"{prefix}.lora_B.weight": torch.randn(640, 16)}
    info = _save(tmp_path, "peft", state)
    assert (info.kind, info.key_format, info.rank, info.architecture) == ("lora", "peft", 16, "sd15")


def test_onetrainer_omi_layout_and_bundled_embedding(tmp_path: Path) -> None:
    state = {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_down.weight": torch.randn(8, 2048),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_up.weight": torch.randn(640, 8),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.alpha": torch.tensor(8.0),
        "clip_l.text_model.encoder.layers.0.self_attn.q_proj.lora_down.weight": torch.randn(8, 768),
        "clip_l.text_model.encoder.layers.0.self_attn.q_proj.lora_up.weight": torch.randn(768, 8),
        "clip_g.text_model.encoder.layers.0.self_attn.q_proj.lora_down.weight": torch.randn(8, 1280),
        "clip_g.text_model.encoder.layers.0.self_attn.q_proj.lora_up.weight": torch.randn(1280, 8),
        "bundle_emb.nova_token.clip_l": torch.randn(2, 768),
        "bundle_emb.nova_token.clip_g": torch.randn(2, 1280),
    }
    info = _save(tmp_path, "omi", state, {"ot_branch": "master"})
    assert (info.kind, info.lora_format, info.key_format, info.architecture) == ("lora", "lora", "omi", "sdxl")
    assert info.bundled_embeddings == ("nova_token",)
    assert (info.rank, info.has_text_encoder) == (8, True)


def test_onetrainer_default_kohya_layout_for_sdxl(tmp_path: Path) -> None:
    state = {**_pair(SDXL_TO_K, 16, 2048, 640), **_pair(SDXL_TE1, 16, 768, 768), **_pair(SDXL_TE2, 16, 1280, 1280)}
    meta = {"ss_base_model_version": "sdxl_base_v1-0", "ss_sd_model_name": "ponyDiffusionV6XL_v6StartWithThisOne.safetensors"}
    info = _save(tmp_path, "ot", state, meta)
    assert (info.key_format, info.architecture, info.family) == ("kohya", "sdxl", "pony")


# --- not LoRAs ---------------------------------------------------------------------------------


def test_textual_inversion_embeddings(tmp_path: Path) -> None:
    info = _save(tmp_path, "EasyNegative", {"emb_params": torch.randn(8, 768)}, {"ss_clip_skip": "2"})
    assert (info.kind, info.architecture, info.vectors, info.encoders) == ("embedding", "sd15", 8, ("clip_l",))
    assert info.lora_format is None and info.rank is None
    xl = _save(tmp_path, "negXL", {"clip_l": torch.randn(4, 768), "clip_g": torch.randn(4, 1280)})
    assert (xl.kind, xl.architecture, xl.vectors, xl.encoders) == ("embedding", "sdxl", 4, ("clip_l", "clip_g"))
    sd2 = _save(tmp_path, "sd2", {"emb_params": torch.randn(2, 1024)})
    assert (sd2.kind, sd2.architecture) == ("embedding", "unknown")


def test_vae_and_v_prediction_checkpoints(tmp_path: Path) -> None:
    vae = {
        "encoder.conv_in.weight": torch.zeros(128, 3, 3, 3).half(),
        "decoder.conv_out.weight": torch.zeros(3, 128, 3, 3).half(),
        "quant_conv.weight": torch.zeros(8, 8, 1, 1).half(),
        "post_quant_conv.weight": torch.zeros(4, 4, 1, 1).half(),
    }
    assert _save(tmp_path, "sdxl_vae", vae).kind == "vae"
    unet = "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight"
    ckpt = {
        unet: torch.zeros(640, 2048).half(),
        "model.diffusion_model.label_emb.0.0.weight": torch.zeros(1280, 2816).half(),
        "v_pred": torch.zeros(0),
        "ztsnr": torch.zeros(0),
    }
    info = _save(tmp_path, "noobaiXLNAIXL_vPred10Version", ckpt)
    assert (info.kind, info.architecture, info.prediction_type, info.zero_terminal_snr) == (
        "checkpoint", "sdxl", "v_prediction", True,
    )  # fmt: skip
    assert info.family == "noobai"
    spec = _save(tmp_path, "plain", {unet: torch.zeros(640, 2048).half()}, {"modelspec.prediction_type": "v"})
    assert (spec.prediction_type, spec.zero_terminal_snr) == ("v_prediction", False)
    eps = _save(tmp_path, "eps", {unet: torch.zeros(640, 2048).half()})
    assert (eps.prediction_type, eps.family) == (None, "unknown")


def _tensor_sha256(path: Path) -> str:
    """A1111's addnet hash, as Civitai computes it: sha256 of the bytes after the header."""
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()


def test_a1111_lora_hash_is_the_files_own_and_sshs_model_hash_only_where_it_agrees(tmp_path: Path) -> None:
    """Issue 16: ``sshs_model_hash`` used to be trusted whatever it held. kohya's equals the
    file's tensor hash; LyCORIS writes "0x" + a hash of other bytes (each tensor serialised on
    its own), which neither Civitai nor A1111's own hashing finds, so only an agreeing value counts."""
    from lycoris.utils import precalculate_safetensors_hashes

    state = {k: v.contiguous() for k, v in _pair(SD15_TO_K, 4, 768, 320).items()}
    # kohya: the metadata holds the hash of these very tensor bytes (the header does not count).
    plain = _save(tmp_path, "plain", state)
    computed = _tensor_sha256(tmp_path / "plain.safetensors")
    kohya = _save(tmp_path, "kohya", state, {"sshs_model_hash": computed})
    assert plain.a1111_hash == kohya.a1111_hash == computed[:12]
    # LyCORIS, as lycoris/kohya.py's save_weights does it.
    lycoris_hash = precalculate_safetensors_hashes(state)
    lycoris = _save(tmp_path, "lycoris", state, {"sshs_model_hash": lycoris_hash})
    assert lycoris_hash.startswith("0x") and lycoris_hash[2:14] != computed[:12]
    assert lycoris.a1111_hash == _tensor_sha256(tmp_path / "lycoris.safetensors")[:12] == computed[:12]
    for i, claimed in enumerate(("abcdef0123456789" + "0" * 48, "not a hash", "0x" + computed[:10])):
        other = _save(tmp_path, f"claims-{i}", state, {"sshs_model_hash": claimed})
        assert other.a1111_hash == computed[:12], claimed


def test_families_from_kohya_metadata(tmp_path: Path) -> None:
    state = _pair(SDXL_TO_K, 4, 2048, 640)
    cases = {
        "Illustrious-XL-v0.1.safetensors": "illustrious",
        "noobaiXLNAIXL_epsilonPred11Version.safetensors": "noobai",
        "animagine-xl-3.1.safetensors": "animagine",
        "sd_xl_base_1.0.safetensors": "sdxl",
        "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
        "myMerge_v3.safetensors": "unknown",
    }
    for index, (base, family) in enumerate(cases.items()):
        info = _save(tmp_path, f"f{index}", state, {"ss_sd_model_name": base, "ss_new_sd_model_hash": "ab" * 32})
        assert (info.family, info.base_model_name, info.base_model_sha256) == (family, base, "ab" * 32), base
    # An SD 1.5 LoRA whose base is named "pony..." is not taken for the SDXL Pony family.
    sd15 = _save(tmp_path, "sd15pony", _pair(SD15_TO_K, 4, 768, 320), {"ss_sd_model_name": "ponyStyle15.ckpt"})
    assert sd15.family == "unknown"
