"""Generator.run on the tiny models: determinism, progress, cancellation, refusals, health."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import pickle
import weakref

import numpy as np
import pytest

from engine.generate import Generator
from engine.png_metadata import read_png_metadata, recipe_with_files
from engine.protocol import EngineError, ErrorCode, LoraRef, Recipe
from tests.engine._images import mean_abs_diff, pixels

RECIPE = Recipe(
    model="sd15-tiny.safetensors",
    prompt="a lighthouse at dusk",
    negative_prompt="blurry",
    steps=3,
    width=64,
    height=64,
    seed=42,
)


def test_same_seed_same_bytes_and_different_seed_differs(tiny_generator: Generator) -> None:
    first = tiny_generator.run(RECIPE).images[0]
    tiny_generator.run(
        dataclasses.replace(RECIPE, prompt="something else", seed=1)
    )  # disturb state
    again = tiny_generator.run(RECIPE).images[0]
    assert first == again
    other = tiny_generator.run(dataclasses.replace(RECIPE, seed=43)).images[0]
    assert mean_abs_diff(first, other) > 1.0


def test_batch_uses_consecutive_seeds(tiny_generator: Generator) -> None:
    """count > 1 is one batched call; each image still comes from its own seed (stated tolerance)."""
    from engine.generate import BATCH_TOLERANCE

    steps: list[tuple[int, int]] = []
    result = tiny_generator.run(
        dataclasses.replace(RECIPE, count=2), on_step=lambda d, t: steps.append((d, t))
    )
    assert result.seeds == [42, 43]
    # Both images advance together: progress counts image-steps of the job, 2 per step.
    assert steps == [(2, 6), (4, 6), (6, 6)]
    assert result.timings["batch_images"] == 2 and result.timings["batch_jobs"] == 1
    for index, seed in enumerate((42, 43)):
        alone = tiny_generator.run(dataclasses.replace(RECIPE, seed=seed)).images[0]
        batched = pixels(result.images[index]).astype(int)
        assert np.abs(batched - pixels(alone).astype(int)).max() <= 2
        assert mean_abs_diff(result.images[index], alone) <= BATCH_TOLERANCE
    first, second = pixels(result.images[0]), pixels(result.images[1])
    assert mean_abs_diff(result.images[0], result.images[1]) > 1.0, (first.shape, second.shape)
    # The second PNG's own recipe is the one that makes it: seed 43, one image.
    shared = read_png_metadata(result.images[1])["recipe"]
    assert (shared["seed"], shared["count"]) == (43, 1)
    # Mapped back to this machine's files (as the bot maps names and hashes to its registry),
    # it makes the same image (within the batch tolerance: it now runs alone).
    second = recipe_with_files(shared, RECIPE.model, {})
    assert mean_abs_diff(tiny_generator.run(second).images[0], result.images[1]) <= BATCH_TOLERANCE
    assert {"prepare", "denoise", "encode", "total"} <= set(result.timings)
    assert result.timings["total"] >= result.timings["denoise"] > 0


def test_jobs_sharing_a_batch_key_run_in_one_call(tiny_generator: Generator) -> None:
    """Two jobs with other prompts and seeds but the same model/stack/size/steps: one call."""
    from engine.generate import BATCH_TOLERANCE

    a = dataclasses.replace(RECIPE, prompt="a red boat", seed=5)
    b = dataclasses.replace(RECIPE, prompt="a green hill", seed=9, count=2)
    progress: dict[str, list[int]] = {"a": [], "b": []}
    results = tiny_generator.run_batch(
        [a, b],
        on_step=[lambda d, t: progress["a"].append(d), lambda d, t: progress["b"].append(d)],
    )
    assert [r.seeds for r in results] == [[5], [9, 10]]
    assert progress == {"a": [1, 2, 3], "b": [2, 4, 6]}
    assert results[0].timings["batch_jobs"] == 2 and results[0].timings["batch_images"] == 3
    for recipe, result in ((a, results[0]), (b, results[1])):
        for seed, png in zip(result.seeds, result.images, strict=True):
            alone = tiny_generator.run(dataclasses.replace(recipe, seed=seed, count=1)).images[0]
            assert mean_abs_diff(png, alone) <= BATCH_TOLERANCE
    with pytest.raises(EngineError):
        tiny_generator.run_batch([a, dataclasses.replace(b, steps=4)])


def test_cancel_stops_at_the_next_step(tiny_generator: Generator) -> None:
    steps: list[int] = []
    recipe = dataclasses.replace(RECIPE, steps=10, count=2)
    with pytest.raises(EngineError) as caught:
        tiny_generator.run(
            recipe, on_step=lambda d, t: steps.append(d), should_cancel=lambda: len(steps) >= 2
        )
    assert caught.value.code is ErrorCode.CANCELLED
    assert steps == [2, 4]  # both images advance together: 2 image-steps per step
    assert tiny_generator.run(RECIPE).images  # usable afterwards


def test_png_carries_a1111_text_and_the_recipe(tiny_generator: Generator) -> None:
    recipe = dataclasses.replace(
        RECIPE,
        loras=(LoraRef("sd15/watercolor.safetensors", 0.8, name="watercolor"),),
        model_name="Tiny SD",
    )
    png = tiny_generator.run(recipe).images[0]
    meta = read_png_metadata(png)
    lora_info = tiny_generator.inspect(tiny_generator.lora_root / "sd15/watercolor.safetensors")
    model_info = tiny_generator.inspect(tiny_generator.model_root / "sd15-tiny.safetensors")
    # The PNG's recipe pins every file's hashes, the ones A1111 writes included, and names no
    # path on the operator's disk: files are empty, names and hashes identify them.
    shared = meta["recipe"]
    assert (shared["model"], shared["model_name"], shared["model_hash"]) == ("", "Tiny SD", model_info.autov2)
    assert [(lo["file"], lo["name"]) for lo in shared["loras"]] == [("", "watercolor")]
    assert "sd15" not in json.dumps(shared) and "safetensors" not in png.decode("latin-1")
    pinned = (dataclasses.replace(recipe.loras[0], sha256=lora_info.sha256, a1111_hash=lora_info.a1111_hash),)
    again = recipe_with_files(shared, recipe.model, {"watercolor": recipe.loras[0].file})
    assert again == dataclasses.replace(recipe, loras=pinned, model_hash=model_info.autov2)
    text = meta["parameters"]
    assert text.startswith("a lighthouse at dusk <lora:watercolor:0.8>\nNegative prompt: blurry\n")
    assert f"Model hash: {model_info.autov2}, Model: Tiny SD" in text
    assert f'Lora hashes: "watercolor: {lora_info.a1111_hash}"' in text
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in text


def test_demo_size_is_real(tiny_generator: Generator) -> None:
    """The VAE upsamples by 8 like the real one: a 512x512 recipe gives a 512x512 image."""
    png = tiny_generator.run(dataclasses.replace(RECIPE, steps=1, width=512, height=384)).images[0]
    assert pixels(png).shape == (384, 512, 3)


@pytest.mark.parametrize(
    "model, code",
    [
        ("missing.safetensors", ErrorCode.UNKNOWN_FILE),
        ("../outside.safetensors", ErrorCode.OUTSIDE_FOLDER),
        ("/etc/passwd", ErrorCode.OUTSIDE_FOLDER),
        ("sd15-tiny.ckpt", ErrorCode.NOT_SAFETENSORS),
    ],
)
def test_bad_model_paths_refused(tiny_generator: Generator, model: str, code: ErrorCode) -> None:
    with pytest.raises(EngineError) as caught:
        tiny_generator.run(dataclasses.replace(RECIPE, model=model))
    assert caught.value.code is code


class _Tripwire:
    """Unpickling this would create a file: proof that nothing was unpickled if it is absent."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_are_never_loaded(demo_assets, tmp_path) -> None:
    marker = tmp_path / "unpickled"
    lora_root = tmp_path / "loras"
    lora_root.mkdir()
    for name in ("evil.pt", "evil.ckpt", "evil.bin"):
        (lora_root / name).write_bytes(pickle.dumps(_Tripwire(str(marker))))
    # a pickle wearing a .safetensors name is not a safetensors file either
    (lora_root / "disguised.safetensors").write_bytes(pickle.dumps(_Tripwire(str(marker))))
    generator = Generator(demo_assets.model_root, lora_root)
    codes = {}
    for name in ("evil.pt", "evil.ckpt", "evil.bin", "disguised.safetensors"):
        with pytest.raises(EngineError) as caught:
            generator.run(dataclasses.replace(RECIPE, loras=(LoraRef(name, 1.0),)))
        codes[name] = caught.value.code
    assert codes.pop("disguised.safetensors") in (ErrorCode.NOT_SAFETENSORS, ErrorCode.CORRUPT_FILE)
    assert set(codes.values()) == {ErrorCode.NOT_SAFETENSORS}
    assert not marker.exists()
    assert not generator.models.entries  # refused before the model was even loaded


def test_pickled_diffusers_folder_refused(demo_assets, tmp_path) -> None:
    import shutil

    folder = tmp_path / "models" / "pickled"
    shutil.copytree(demo_assets.model_root / "sdxl-tiny", folder)
    for weights in folder.glob("*/*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    generator = Generator(tmp_path / "models", demo_assets.lora_root)
    with pytest.raises(EngineError) as caught:
        generator.run(dataclasses.replace(RECIPE, model="pickled"))
    assert caught.value.code is ErrorCode.NOT_SAFETENSORS


@pytest.mark.parametrize(
    "change, words",
    [
        ({"sampler": "Bogus"}, "Euler a"),
        ({"steps": 0}, "steps"),
        ({"width": 100}, "width"),
        ({"count": 99}, "count"),
    ],
)
def test_invalid_recipes_refused(tiny_generator: Generator, change: dict, words: str) -> None:
    with pytest.raises(EngineError) as caught:
        tiny_generator.run(dataclasses.replace(RECIPE, **change))
    assert caught.value.code is ErrorCode.INVALID_RECIPE
    assert words in caught.value.message


def test_switching_models_keeps_both_and_health_reports(demo_assets) -> None:
    generator = Generator(demo_assets.model_root, demo_assets.lora_root)
    generator.run(dataclasses.replace(RECIPE, loras=(LoraRef("sd15/pixel-art.safetensors", 1.0),)))
    health = generator.health()
    assert health["loaded_model"] == "sd15-tiny.safetensors" and health["device"] == "cpu"
    assert [entry["file"] for entry in health["cached_loras"]] == ["sd15/pixel-art.safetensors"]
    assert health["memory"]["rss_bytes"] > 0
    sd15 = generator.current
    generator.run(dataclasses.replace(RECIPE, model="sdxl-tiny"))
    health = generator.health()
    assert health["loaded_model"] == "sdxl-tiny"
    sha = generator.inspect(demo_assets.model_root / "sd15-tiny.safetensors").sha256
    assert {(m["file"], m["tier"]) for m in health["models"]} == {
        ("sd15-tiny.safetensors", "device"), ("sdxl-tiny", "device")
    }
    assert {"file", "sha256", "tier"} == set(health["models"][0])
    assert sha in {m["sha256"] for m in health["models"]}
    # Back to SD 1.5: from the cache, with its LoRA state kept (nothing reloaded or re-applied).
    loads = generator.loras.loads
    back = generator.run(dataclasses.replace(RECIPE, loras=(LoraRef("sd15/pixel-art.safetensors", 1.0),)))
    assert back.timings["model_source"] == "cached" and generator.models.disk_loads == 2
    assert generator.current is sd15 and generator.loras.loads == loads
    assert back.timings["lora_apply"] == 0.0


def test_a_model_over_the_budget_frees_the_old_one(demo_assets) -> None:
    """With room for one model, the old one is freed before the next loads, LoRA state and all."""
    generator = Generator(demo_assets.model_root, demo_assets.lora_root, model_device_budget=1)
    generator.run(dataclasses.replace(RECIPE, loras=(LoraRef("sd15/pixel-art.safetensors", 1.0),)))
    old = weakref.ref(generator.current.pipe)
    generator.run(dataclasses.replace(RECIPE, model="sdxl-tiny"))
    gc.collect()
    assert old() is None
    assert [m["file"] for m in generator.health()["models"]] == ["sdxl-tiny"]


def test_truncated_files_are_corrupt(demo_assets, tmp_path) -> None:
    models, loras = tmp_path / "models", tmp_path / "loras"
    models.mkdir()
    loras.mkdir()
    model_bytes = (demo_assets.model_root / demo_assets.models["sd15"]).read_bytes()
    (models / "cut.safetensors").write_bytes(model_bytes[: len(model_bytes) // 2])
    lora_bytes = (demo_assets.lora_root / "sd15/watercolor.safetensors").read_bytes()
    (loras / "cut.safetensors").write_bytes(lora_bytes[:100])
    generator = Generator(models, loras)
    with pytest.raises(EngineError) as caught:
        generator.run(dataclasses.replace(RECIPE, model="cut.safetensors"))
    assert caught.value.code is ErrorCode.CORRUPT_FILE
    generator = Generator(demo_assets.model_root, loras)
    with pytest.raises(EngineError) as caught:
        generator.run(dataclasses.replace(RECIPE, loras=(LoraRef("cut.safetensors", 1.0),)))
    assert caught.value.code is ErrorCode.CORRUPT_FILE
    assert not generator.models.entries


def test_a_failed_model_switch_leaves_no_old_pipeline_alive(demo_assets, tmp_path) -> None:
    """With room for one model, the old one is freed before the next loads: nothing (the LoRA
    cache included) keeps it, even when the next one fails to load."""
    import shutil

    from sandbox.model_builder import config_sidecar

    models = tmp_path / "models"
    models.mkdir()
    sd15 = demo_assets.model_root / demo_assets.models["sd15"]
    shutil.copy(sd15, models / sd15.name)
    shutil.copytree(config_sidecar(sd15), config_sidecar(models / sd15.name))
    broken = models / "broken-xl"
    shutil.copytree(demo_assets.model_root / demo_assets.models["sdxl"], broken)
    (broken / "unet" / "config.json").write_text("{not json")
    generator = Generator(models, demo_assets.lora_root, model_device_budget=1)
    generator.run(dataclasses.replace(RECIPE, loras=(LoraRef("sd15/watercolor.safetensors", 1.0),)))
    old = weakref.ref(generator.current.pipe)
    with pytest.raises(EngineError) as caught:
        generator.run(dataclasses.replace(RECIPE, model="broken-xl"))
    assert caught.value.code is ErrorCode.CORRUPT_FILE
    gc.collect()
    assert old() is None and not generator.models.entries
    assert generator.health()["models"] == []
    assert generator.run(RECIPE).images  # and the engine recovers


def test_new_weights_in_a_pipeline_folder_change_its_hash(demo_assets, tmp_path) -> None:
    """Only model_index.json used to key the folder: new UNet weights kept the old hash (and model)."""
    import shutil

    from safetensors.torch import load_file, save_file

    models = tmp_path / "models"
    folder = models / "xl"
    shutil.copytree(demo_assets.model_root / demo_assets.models["sdxl"], folder)
    generator = Generator(models, demo_assets.lora_root)
    before = generator.inspect(folder).sha256
    assert generator.inspect(folder).sha256 == before  # memoised while nothing changes
    weights = next((folder / "unet").glob("*.safetensors"))
    tensors = load_file(str(weights))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 1
    save_file(tensors, str(weights))
    assert generator.inspect(folder).sha256 != before


@pytest.mark.parametrize("trap", ["pickle", "link-out"])
def test_a_single_file_config_folder_with_a_pickle_or_an_outside_link_is_refused(
    demo_assets, tmp_path, trap: str
) -> None:
    """from_single_file would load a component missing from the checkpoint out of this folder."""
    import shutil

    from sandbox.model_builder import config_sidecar

    models = tmp_path / "models"
    models.mkdir()
    sd15 = demo_assets.model_root / demo_assets.models["sd15"]
    shutil.copy(sd15, models / sd15.name)
    sidecar = config_sidecar(models / sd15.name)
    marker = tmp_path / "unpickled"
    if trap == "pickle":
        shutil.copytree(config_sidecar(sd15), sidecar)
        (sidecar / "text_encoder" / "pytorch_model.bin").write_bytes(
            pickle.dumps(_Tripwire(str(marker)))
        )
        expected = ErrorCode.NOT_SAFETENSORS
    else:
        shutil.copytree(config_sidecar(sd15), tmp_path / "elsewhere")
        os.symlink(tmp_path / "elsewhere", sidecar)
        expected = ErrorCode.OUTSIDE_FOLDER
    generator = Generator(models, demo_assets.lora_root)
    with pytest.raises(EngineError) as caught:
        generator.run(RECIPE)
    assert caught.value.code is expected
    assert not marker.exists() and not generator.models.entries


def test_a_checkpoint_missing_a_component_is_corrupt_not_internal(demo_assets, tmp_path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from sandbox.model_builder import config_sidecar

    models = tmp_path / "models"
    models.mkdir()
    sd15 = demo_assets.model_root / demo_assets.models["sd15"]
    tensors = load_file(str(sd15))
    without_text_encoder = {k: v for k, v in tensors.items() if not k.startswith("cond_stage_model.")}
    save_file(without_text_encoder, str(models / sd15.name))
    shutil.copytree(config_sidecar(sd15), config_sidecar(models / sd15.name))
    with pytest.raises(EngineError) as caught:
        Generator(models, demo_assets.lora_root).run(RECIPE)
    assert caught.value.code is ErrorCode.CORRUPT_FILE
    assert "complete" in caught.value.message


def test_the_per_call_timing_table_stays_bounded(tiny_generator: Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each new size adds a measurement; a long-running engine keeps only the newest ones."""
    import engine.generate

    monkeypatch.setattr(engine.generate, "CALL_SECONDS_MAX", 3, raising=False)
    sizes = [(64, 64), (64, 96), (128, 64), (96, 96), (128, 96), (64, 64)]  # five latent sizes
    for width, height in sizes:
        tiny_generator.run(dataclasses.replace(RECIPE, steps=1, width=width, height=height))
    table = tiny_generator._call_seconds
    assert len(table) == 3
    # The newest three shapes (64x64 measured again counts as new), not the first three.
    assert sorted(latent for _, latent, _ in table) == sorted((w // 8) * (h // 8) for w, h in sizes[-3:])
