"""The offline builder: real architectures and file layouts, deterministic, idempotent."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open

from engine.inspect import inspect_file
from engine.pipelines import load_pipeline
from engine.tokenizer import BOS_ID, EOS_ID, load_tokenizer, write_tokenizer
from sandbox.model_builder import build_components, build_demo_assets, config_sidecar, main


def _keys(path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _metadata(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def test_tokenizer_matches_real_clip_ids(tmp_path) -> None:
    tokenizer = load_tokenizer(write_tokenizer(tmp_path / "tok"))
    ids = tokenizer("a photo of an astronaut riding a horse").input_ids
    # The ids OpenAI's CLIP tokenizer gives for this sentence.
    assert ids == [BOS_ID, 320, 1125, 539, 550, 18376, 6765, 320, 4558, EOS_ID]
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    padded = tokenizer("hi", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == EOS_ID


def test_sd15_is_one_ldm_layout_file_that_loads_back_exactly(demo_assets) -> None:
    path = demo_assets.model_root / demo_assets.models["sd15"]
    keys = _keys(path)
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    pipe, arch = load_pipeline(path)
    assert arch == "sd15" and type(pipe).__name__ == "StableDiffusionPipeline"
    reference = build_components("sd15", "tiny", 0)
    for name in ("unet", "vae", "text_encoder"):
        loaded = getattr(pipe, name).state_dict()
        for key, tensor in reference[name].state_dict().items():
            assert torch.equal(loaded[key], tensor), f"{name}.{key}"
    assert pipe.vae_scale_factor == 8 and len(pipe.vae.config.block_out_channels) == 4
    assert pipe.text_encoder.config.vocab_size == 49408
    assert pipe.text_encoder.config.eos_token_id == pipe.tokenizer.eos_token_id == EOS_ID
    assert (config_sidecar(path) / "model_index.json").is_file()


def test_sdxl_is_a_diffusers_folder_of_safetensors(demo_assets) -> None:
    folder = demo_assets.model_root / demo_assets.models["sdxl"]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    weights = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors"))
    assert [w.split("/")[0] for w in weights] == ["text_encoder", "text_encoder_2", "unet", "vae"]
    assert not [p for p in folder.rglob("*") if p.suffix in {".bin", ".ckpt", ".pt"}]
    assert inspect_file(folder).architecture == "sdxl"


def test_shipped_real_configs_describe_the_real_models() -> None:
    from sandbox.model_builder import component_configs

    sd15, sdxl = component_configs("sd15", "full"), component_configs("sdxl", "full")
    assert sd15["unet"]["cross_attention_dim"] == 768 and sd15["unet"]["block_out_channels"] == [
        320,
        640,
        1280,
        1280,
    ]
    assert (
        sdxl["unet"]["cross_attention_dim"] == 2048
        and sdxl["unet"]["addition_embed_type"] == "text_time"
    )
    assert (
        sdxl["text_encoder_2"]["hidden_size"] == 1280 and sdxl["vae"]["scaling_factor"] == 0.13025
    )


def test_demo_loras_cover_the_formats(demo_assets) -> None:
    by_name = {lora.name: lora for lora in demo_assets.loras}
    for lora in demo_assets.loras:
        info = inspect_file(demo_assets.lora_root / lora.file)
        assert info.kind == "lora", lora.name
        assert info.architecture == lora.architecture or lora.name.startswith("flux-only"), (
            lora.name
        )
        assert info.has_text_encoder == lora.has_text_encoder, lora.name
    kohya = _keys(demo_assets.lora_root / by_name["captain-nova"].file)
    assert any(k.startswith("lora_unet_") for k in kohya) and any(
        k.startswith("lora_te_") for k in kohya
    )
    assert any(k.endswith(".alpha") for k in kohya)
    kohya_xl = _keys(demo_assets.lora_root / by_name["captain-nova-xl"].file)
    assert any(k.startswith("lora_te1_") for k in kohya_xl) and any(
        k.startswith("lora_te2_") for k in kohya_xl
    )
    assert any(k.startswith("lora_unet_input_blocks_") for k in kohya_xl)
    peft = _keys(demo_assets.lora_root / by_name["watercolor"].file)
    assert all(k.startswith(("unet.", "text_encoder.")) and ".lora_" in k for k in peft)
    assert not any(
        k.startswith("text_encoder.")
        for k in _keys(demo_assets.lora_root / by_name["pixel-art"].file)
    )
    meta = _metadata(demo_assets.lora_root / by_name["pixel-art"].file)
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_output_name"] == "pixel-art"
    assert "pixel art" in json.loads(meta["ss_tag_frequency"])["10_pixel-art"]
    demo = [lora for lora in demo_assets.loras if lora.purpose == "demo"]
    assert {lora.architecture for lora in demo} == {"sd15", "sdxl"}
    assert all(lora.description and lora.trigger_words for lora in demo)


def test_build_is_idempotent_and_deterministic(demo_assets, tmp_path) -> None:
    out = demo_assets.model_root.parent
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    again = build_demo_assets(out)
    assert again == demo_assets
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == before
    # A second build elsewhere (via the CLI) gives byte-identical files.
    assert main(["--out", str(tmp_path / "b"), "--arch", "sd15"]) == 0
    for rel in (
        "models/sd15-tiny.safetensors",
        "loras/sd15/pixel-art.safetensors",
        "loras/sd15/watercolor.safetensors",
    ):
        assert (tmp_path / "b" / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_incomplete_build_is_redone(tmp_path) -> None:
    assets = build_demo_assets(tmp_path, architectures=("sd15",), with_loras=False)
    model = assets.model_root / assets.models["sd15"]
    model.write_bytes(b"truncated")
    (tmp_path / "atelier-build.json").unlink()  # as if interrupted before the stamp
    rebuilt = build_demo_assets(tmp_path, architectures=("sd15",), with_loras=False)
    assert (rebuilt.model_root / rebuilt.models["sd15"]).stat().st_size > 1_000_000


def test_unknown_architecture_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="sd15"):
        build_demo_assets(tmp_path, architectures=("flux",))


def test_never_goes_online() -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_sdxl_single_file_in_sgm_layout_loads_back_exactly(tmp_path) -> None:
    """SDXL civitai-style single files (sgm UNet, OpenCLIP second encoder) go through from_single_file."""
    from sandbox.model_builder import component_configs, save_single_file, write_config_folder

    components = build_components("sdxl", "tiny", 3)
    path = tmp_path / "xl-single.safetensors"
    save_single_file(components, path, "sdxl")
    keys = _keys(path)
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    assert inspect_file(path).architecture == "sdxl"
    write_config_folder(config_sidecar(path), "sdxl", component_configs("sdxl", "tiny"))
    pipe, arch = load_pipeline(path)
    assert arch == "sdxl"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        loaded = getattr(pipe, name).state_dict()
        for key, tensor in components[name].state_dict().items():
            assert torch.equal(loaded[key], tensor), f"{name}.{key}"


def test_shipped_configs_appear_whole_or_not_at_all(tmp_path, monkeypatch) -> None:
    """A writer killed half-way used to leave model_index.json alone, which every later
    single-file load then took for a finished folder."""
    from engine import pipelines

    monkeypatch.setenv("ATELIER_CACHE", str(tmp_path))
    real_writer = pipelines.write_config_folder

    def dies_half_way(folder, arch, configs):  # type: ignore[no-untyped-def]
        real_writer(folder, arch, {})  # model_index.json and tokenizers, no component configs
        raise OSError("killed")

    monkeypatch.setattr(pipelines, "write_config_folder", dies_half_way)
    with pytest.raises(OSError, match="killed"):
        pipelines.shipped_config("sd15")
    assert list((tmp_path / "configs").iterdir()) == []  # no partial folder, no staging left
    monkeypatch.setattr(pipelines, "write_config_folder", real_writer)
    folder = pipelines.shipped_config("sd15")
    assert json.loads((folder / "unet" / "config.json").read_text())["cross_attention_dim"] == 768
    assert (folder / "tokenizer" / "vocab.json").is_file()
    assert pipelines.shipped_config("sd15") == folder
    assert [p.name for p in (tmp_path / "configs").iterdir()] == [folder.name]
