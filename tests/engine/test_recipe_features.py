"""Clip skip, embeddings and prediction type through a real generation on the tiny models."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.inspect import inspect_file
from engine.png_metadata import read_png_metadata
from engine.prediction import resolve_prediction
from engine.protocol import EmbeddingRef, EngineError, ErrorCode, Recipe
from engine.recipe.a1111 import read_parameters
from engine.samplers import make_scheduler
from sandbox.model_builder import config_sidecar
from tests.engine._images import pixels


def _recipe(demo_assets, **changes) -> Recipe:
    base = Recipe(model=demo_assets.models["sd15"], prompt="a lighthouse", steps=2, width=64, height=64, seed=5)
    return replace(base, **changes)


def test_v_prediction_checkpoints_get_a_v_prediction_scheduler(demo_assets, tmp_path: Path) -> None:
    from engine.generate import Generator

    source = demo_assets.model_root / demo_assets.models["sd15"]
    models = tmp_path / "models"
    models.mkdir()
    state = load_file(str(source))
    state["v_pred"], state["ztsnr"] = torch.zeros(0), torch.zeros(0)
    target = models / "vpred.safetensors"
    save_file(state, str(target), metadata={"modelspec.title": "vpred"})
    shutil.copytree(config_sidecar(source), config_sidecar(target))
    info = inspect_file(target)
    assert (info.prediction_type, info.zero_terminal_snr) == ("v_prediction", True)

    generator = Generator(models, demo_assets.lora_root)
    recipe = Recipe(model="vpred.safetensors", prompt="a lighthouse", steps=2, width=64, height=64, sampler="Euler")
    generator.run(recipe)
    config = generator.current.pipe.scheduler.config
    assert (config.prediction_type, config.rescale_betas_zero_snr, config.timestep_spacing) == (
        "v_prediction", True, "trailing",
    )  # fmt: skip
    # An admin's override wins over the file; Heun cannot rescale betas and says so.
    generator.run(replace(recipe, prediction_type="epsilon"))
    assert generator.current.pipe.scheduler.config.prediction_type == "epsilon"
    with pytest.raises(EngineError) as caught:
        generator.run(replace(recipe, sampler="Heun"))
    assert caught.value.code is ErrorCode.INVALID_RECIPE and "zero-terminal-SNR" in caught.value.message


def test_an_epsilon_file_keeps_its_scheduler(demo_assets) -> None:
    info = inspect_file(demo_assets.model_root / demo_assets.models["sd15"])
    assert resolve_prediction("", info) is None
    config = json.loads((Path("data/configs/sd15/scheduler/scheduler_config.json")).read_text())
    scheduler = make_scheduler("Euler", config, resolve_prediction("v_prediction", info))
    assert (scheduler.config.prediction_type, scheduler.config.rescale_betas_zero_snr) == ("v_prediction", False)


@pytest.fixture
def emb_dir(tiny_generator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An embedding folder of the test's own (the shared demo folders stay as built)."""
    folder = tmp_path / "embeddings"
    folder.mkdir()
    monkeypatch.setattr(tiny_generator, "embedding_root", tmp_path)
    return folder


def test_clip_skip_and_embeddings_change_the_image_and_reach_the_png(tiny_generator, demo_assets, emb_dir) -> None:
    width = tiny_generator.current.pipe.text_encoder.config.hidden_size if tiny_generator.current else 32
    save_file({"emb_params": torch.randn(2, width, generator=torch.Generator().manual_seed(1)) * 3},
              str(emb_dir / "glowy.safetensors"))  # fmt: skip
    base = tiny_generator.run(_recipe(demo_assets)).images[0]
    skipped = tiny_generator.run(_recipe(demo_assets, clip_skip=2)).images[0]
    assert (pixels(base) != pixels(skipped)).any()
    text = read_png_metadata(skipped)["parameters"]
    assert read_parameters(text).recipe.clip_skip == 2 and "Clip skip: 2" in text
    assert "Clip skip" not in read_png_metadata(base)["parameters"]

    embedding = EmbeddingRef(file="embeddings/glowy.safetensors", name="glowy")
    used = tiny_generator.run(_recipe(demo_assets, prompt="a glowy lighthouse", embeddings=(embedding,)))
    plain = tiny_generator.run(_recipe(demo_assets, prompt="a glowy lighthouse")).images[0]
    assert (pixels(used.images[0]) != pixels(plain)).any()
    metadata = read_png_metadata(used.images[0])
    sha = inspect_file(emb_dir / "glowy.safetensors").sha256
    assert read_parameters(metadata["parameters"]).recipe.embeddings == (EmbeddingRef("", "glowy", sha[:12]),)
    # Named by its name and hash in the image, never by its path on the operator's disk.
    assert metadata["recipe"]["embeddings"] == [{"file": "", "name": "glowy", "sha256": sha}]
    # Named but not used: no TI hash, as A1111 writes only the embeddings the prompt used.
    unused = tiny_generator.run(_recipe(demo_assets, embeddings=(embedding,))).images[0]
    assert "TI hashes" not in read_png_metadata(unused)["parameters"]


def test_an_sdxl_embedding_on_sd15_is_refused_naming_both(tiny_generator, demo_assets, emb_dir) -> None:
    save_file({"clip_l": torch.zeros(1, 32), "clip_g": torch.zeros(1, 64)}, str(emb_dir / "xl.safetensors"))
    with pytest.raises(EngineError) as caught:
        tiny_generator.run(_recipe(demo_assets, embeddings=(EmbeddingRef("embeddings/xl.safetensors", "xl"),)))
    assert caught.value.code is ErrorCode.ARCH_MISMATCH
    assert "made for SDXL" in caught.value.message and "SD 1.5" in caught.value.message
    with pytest.raises(EngineError) as caught:
        shutil.copy(demo_assets.lora_root / demo_assets.loras[0].file, emb_dir / "lora.safetensors")
        tiny_generator.run(_recipe(demo_assets, embeddings=(EmbeddingRef("embeddings/lora.safetensors", "w"),)))
    assert "not a textual-inversion embedding" in caught.value.message
