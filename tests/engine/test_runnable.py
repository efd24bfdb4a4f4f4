"""What the engine says it can run: diffusion transformers are recognised as what they are
(never as SD 1.5/SDXL), and every inspection carries the engine's verdict (``cannot_run``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from engine.inspect import inspect_file
from engine.pipelines import PIPELINE_ARCH, single_file_arch
from engine.protocol import EngineError, ErrorCode
from engine.support import RUNNABLE_ARCHITECTURES, runs_text
from tests import dit_files


def test_the_loader_builds_exactly_what_inspection_calls_runnable() -> None:
    assert sorted(PIPELINE_ARCH.values()) == sorted(RUNNABLE_ARCHITECTURES)


@pytest.mark.parametrize(
    ("build", "kind", "architecture", "says"),
    [
        (dit_files.sd3_checkpoint, "checkpoint", "sd3", "is an SD 3 checkpoint"),
        (dit_files.sd3_peft_lora, "lora", "sd3", "is a LoRA for SD 3"),
    ],
)
def test_diffusion_transformers_are_named_and_refused(
    tmp_path: Path, build: Callable[[Path], Path], kind: str, architecture: str, says: str
) -> None:
    path = build(tmp_path / "file.safetensors")
    info = inspect_file(path)
    assert (info.kind, info.architecture) == (kind, architecture)
    assert info.cannot_run is not None and says in info.cannot_run, info.cannot_run
    assert f"this engine runs {runs_text()} models only" in info.cannot_run
    assert info.cannot_run.startswith("`file.safetensors` ")


@pytest.mark.parametrize(
    ("build", "kind"),
    [
        (dit_files.flux_bfl_checkpoint, "checkpoint"),
        (lambda p: dit_files.flux_bfl_checkpoint(p, prefix="model.diffusion_model."), "checkpoint"),
        (dit_files.flux_diffusers_transformer, "checkpoint"),
        (dit_files.flux_kohya_lora, "lora"),
        (dit_files.flux_diffusers_kohya_lora, "lora"),
        (dit_files.flux_peft_lora, "lora"),
        (lambda p: dit_files.flux_peft_lora(p, add_q_proj=True), "lora"),
    ],
)
def test_flux_files_are_named_and_run(tmp_path: Path, build: Callable[[Path], Path], kind: str) -> None:
    """FLUX.1 runs (engine.arch.flux.RUNS): its checkpoints and LoRAs in each layout carry no
    refusal, and are still never taken for SD 1.5/SDXL."""
    info = inspect_file(build(tmp_path / "file.safetensors"))
    assert (info.kind, info.architecture, info.cannot_run) == (kind, "flux", None)


def test_an_unknown_dit_is_not_taken_for_a_unet(tmp_path: Path) -> None:
    """PixArt-style blocks (self- and cross-attention at the top level): no SD 1.5 guess."""
    state = {
        "transformer.transformer_blocks.1.attn2.to_k.lora_A.weight": np.zeros((4, 1152), np.float16),
        "transformer.transformer_blocks.1.attn2.to_k.lora_B.weight": np.zeros((1152, 4), np.float16),
    }
    path = tmp_path / "pixart.safetensors"
    save_file(state, str(path))
    info = inspect_file(path)
    assert info.architecture == "unknown"
    assert info.cannot_run is not None and "diffusion-transformer (DiT)" in info.cannot_run


@pytest.mark.parametrize(
    ("module", "says"),
    [
        ("lora_unet_single_layers_0_attn_to_q", "is a LoRA for AuraFlow"),  # was read as SD 1.5
        ("lora_unet_double_stream_blocks_0_block_attn1_to_q", "is a LoRA for HiDream"),
        ("diffusion_model.blocks.0.self_attn.q", "diffusion-transformer (DiT)"),
    ],
)
def test_other_dit_loras_are_never_read_as_sd(tmp_path: Path, module: str, says: str) -> None:
    state = {f"{module}.lora_down.weight": np.zeros((4, 64), np.float16),
             f"{module}.lora_up.weight": np.zeros((64, 4), np.float16)}  # fmt: skip
    info = inspect_file(_write(tmp_path / "dit.safetensors", state))
    assert info.architecture == "unknown"
    assert info.cannot_run is not None and says in info.cannot_run, info.cannot_run


def _write(path: Path, state: dict[str, Any]) -> Path:
    save_file(state, str(path))
    return path


def test_checkpoint_variants_that_are_not_text_to_image(tmp_path: Path) -> None:
    unet = "model.diffusion_model."
    inpaint = _write(tmp_path / "inpaint.safetensors", {
        f"{unet}input_blocks.0.0.weight": np.zeros((32, 9, 3, 3), np.float16),
        f"{unet}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": np.zeros((32, 768), np.float16),
    })  # fmt: skip
    refiner = _write(tmp_path / "refiner.safetensors", {
        f"{unet}label_emb.0.0.weight": np.zeros((4, 4), np.float16),
        f"{unet}input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": np.zeros((8, 1280), np.float16),
    })  # fmt: skip
    plain = _write(tmp_path / "plain.safetensors", {
        f"{unet}input_blocks.0.0.weight": np.zeros((32, 4, 3, 3), np.float16),
        f"{unet}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": np.zeros((32, 768), np.float16),
    })  # fmt: skip
    a, b, c = inspect_file(inpaint), inspect_file(refiner), inspect_file(plain)
    assert (a.architecture, a.variant) == ("sd15", "inpainting")
    assert a.cannot_run is not None and "is an SD 1.5 inpainting checkpoint" in a.cannot_run
    assert (b.architecture, b.variant) == ("sdxl", "refiner")
    assert b.cannot_run is not None and "is an SDXL refiner checkpoint" in b.cannot_run
    assert (c.architecture, c.variant, c.cannot_run) == ("sd15", None, None)
    with pytest.raises(EngineError) as caught:
        single_file_arch(inpaint)  # the loader refuses it with the same words, before diffusers
    assert caught.value.code is ErrorCode.ARCH_MISMATCH and "inpainting checkpoint" in caught.value.message


def test_a_lora_format_no_patcher_applies_is_refused_by_name(tmp_path: Path) -> None:
    oft = _write(tmp_path / "oft.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.oft_blocks": np.zeros((4, 8, 8), np.float16),
    })  # fmt: skip
    info = inspect_file(oft)
    assert info.kind == "lora" and info.cannot_run is not None
    assert "LyCORIS OFT" in info.cannot_run and "format this engine cannot apply" in info.cannot_run


def test_every_demo_file_the_engine_runs_says_so(demo_assets: Any) -> None:
    """SD 1.5/SDXL models (single file and diffusers folder) and their LoRAs: no verdict;
    the demo's FLUX test LoRA too, now that FLUX.1 runs."""
    for relative in demo_assets.models.values():
        info = inspect_file(demo_assets.model_root / relative)
        assert info.architecture in ("sd15", "sdxl") and info.cannot_run is None, (relative, info.cannot_run)
    for lora in demo_assets.loras:
        info = inspect_file(demo_assets.lora_root / lora.file)
        if lora.name.startswith("flux-only"):
            assert info.architecture == "flux" and info.cannot_run is None
        elif info.kind == "lora" and info.architecture != "unknown":
            assert info.cannot_run is None, (lora.name, info.cannot_run)


@pytest.mark.parametrize(
    ("class_name", "says"),
    [
        ("FluxFillPipeline", "is a FLUX.1 Fill checkpoint"),
        ("StableDiffusionInpaintPipeline", "is an SD 1.5 inpainting checkpoint"),
        ("Flux2Pipeline", "is a FLUX.2 dev checkpoint, which this engine does not run yet"),
        ("HunyuanDiTPipeline", "is a checkpoint of the diffusers pipeline `HunyuanDiTPipeline`"),
    ],
)
def test_diffusers_folders_the_engine_cannot_run(tmp_path: Path, class_name: str, says: str) -> None:
    import json

    folder = tmp_path / "pipeline"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    save_file({"w": np.zeros(4, np.float16)}, str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    info = inspect_file(folder, relative_to=tmp_path)
    assert info.cannot_run is not None and info.cannot_run.startswith("`pipeline` is ")
    assert says in info.cannot_run, info.cannot_run


@pytest.mark.parametrize(("class_name", "variant"), [
    ("FluxKontextPipeline", "kontext"), ("QwenImageEditPipeline", "edit"), ("QwenImageEditPlusPipeline", "edit_plus"),
])  # fmt: skip
def test_edit_models_diffusers_folders_run(tmp_path: Path, class_name: str, variant: str) -> None:
    """An edit model runs (its runtime's ``edit`` with a picture, text-to-image without one)."""
    import json

    folder = tmp_path / "pipeline"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    save_file({"w": np.zeros(4, np.float16)}, str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    info = inspect_file(folder, relative_to=tmp_path)
    assert (info.variant, info.cannot_run) == (variant, None)
