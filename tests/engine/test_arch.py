"""The architecture modules (engine/arch): each recognises its own files, Civitai's names map
onto them, their size rules hold, and nothing they define is listed a second time elsewhere."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from engine import arch
from engine.arch.recognition import recognise
from engine.inspect import inspect_file, read_header
from tests import dit_files

ROOT = Path(__file__).resolve().parents[2]


def _tensors(path: Path) -> tuple[dict, dict]:
    header, _ = read_header(path)
    metadata = header.pop("__metadata__", {})
    return header, metadata


def _header(entries: dict[str, list[int]]) -> dict[str, dict]:
    return {name: {"dtype": "F16", "shape": shape, "data_offsets": [0, 0]} for name, shape in entries.items()}


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (dit_files.flux_bfl_checkpoint, ("flux", None)),
        (lambda p: dit_files.flux_bfl_checkpoint(p, prefix="model.diffusion_model."), ("flux", None)),
        (dit_files.flux_diffusers_transformer, ("flux", None)),
        (dit_files.flux_kohya_lora, ("flux", None)),
        (dit_files.flux_diffusers_kohya_lora, ("flux", None)),
        (lambda p: dit_files.flux_peft_lora(p, add_q_proj=True), ("flux", None)),
        (dit_files.sd3_peft_lora, ("sd3", None)),
        (dit_files.sd3_checkpoint, ("sd3", None)),
        (dit_files.qwen_image_lora, ("qwen_image", None)),
        (dit_files.flux2_checkpoint, ("flux2", None)),
    ],
)
def test_each_dit_module_recognises_its_files(tmp_path: Path, build, expected: tuple[str, str | None]) -> None:
    tensors, metadata = _tensors(build(tmp_path / "file.safetensors"))
    assert recognise(tensors, metadata) == expected


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        # CLIP-L context (768) is SD 1.5's, SDXL's joint context 2048; SDXL's second encoder alone says SDXL.
        ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, 768]}, "sd15"),
        ({"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, 2048]}, "sdxl"),
        ({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [4, 1280]}, "sdxl"),
        ({"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, 1024]}, "unknown"),
    ],
)
def test_unet_modules_recognise_their_context_widths(keys: dict[str, list[int]], expected: str) -> None:
    assert recognise(_header(keys), {}) == (expected, None)


def test_metadata_decides_only_where_keys_cannot() -> None:
    # No key tells: kohya's base model version does.
    assert recognise(_header({"something.weight": [4, 4]}), {"ss_base_model_version": "sdxl_base_v1-0"}) == ("sdxl", None)
    assert recognise(_header({"something.weight": [4, 4]}), {"modelspec.architecture": "flux-1-dev/lora"}) == ("flux", None)
    # Keys that say SD 1.5 win over metadata that says otherwise.
    sd15 = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, 768]}
    assert recognise(_header(sd15), {"ss_base_model_version": "sdxl_base_v1-0"}) == ("sd15", None)


def _rewrite(source: Path, target: Path, *, drop: str = "", widen: str = "") -> Path:
    state = load_file(str(source))
    state = {k: v for k, v in state.items() if not (drop and k.startswith(drop))}
    if widen:
        state[widen] = np.zeros((state[widen].shape[0], 384), np.float16)
    save_file(state, str(target))
    return target


def test_flux_variants_are_told_apart_where_their_files_differ(tmp_path: Path) -> None:
    dev = dit_files.flux_bfl_checkpoint(tmp_path / "flux1-dev.safetensors")
    schnell = _rewrite(dev, tmp_path / "flux1-schnell.safetensors", drop="guidance_in.")
    fill = _rewrite(dev, tmp_path / "flux1-fill-dev.safetensors", widen="img_in.weight")
    diffusers_dev = dit_files.flux_diffusers_transformer(tmp_path / "transformer.safetensors")
    found = {p.name: inspect_file(p) for p in (dev, schnell, fill, diffusers_dev)}
    assert {name: (info.architecture, info.variant) for name, info in found.items()} == {
        "flux1-dev.safetensors": ("flux", "dev"),
        "flux1-schnell.safetensors": ("flux", "schnell"),
        "flux1-fill-dev.safetensors": ("flux", "fill"),
        "transformer.safetensors": ("flux", "dev"),
    }
    # FLUX.1 runs (engine.arch.flux.RUNS): dev and schnell register; Fill inpaints, which
    # text-to-image cannot do yet, so it is still refused by name.
    assert [name for name, info in found.items() if info.cannot_run] == ["flux1-fill-dev.safetensors"]
    assert "FLUX.1 Fill" in (found["flux1-fill-dev.safetensors"].cannot_run or "")


@pytest.mark.parametrize(
    ("base_model", "expected"),
    [
        ("Flux.1 D", ("flux", "dev", "unknown")),
        ("Flux.1 S", ("flux", "schnell", "unknown")),
        ("Flux.1 Kontext", ("flux", "kontext", "unknown")),
        ("Flux.1 Krea", ("flux", "krea", "unknown")),
        ("SDXL 1.0", ("sdxl", None, "sdxl")),
        ("SDXL 1.0 LCM", ("sdxl", None, "sdxl")),
        ("Pony", ("sdxl", None, "pony")),
        ("Illustrious", ("sdxl", None, "illustrious")),
        ("NoobAI", ("sdxl", None, "noobai")),
        ("SD 1.5", ("sd15", None, "sd15")),
        ("SD 3.5 Large", ("sd3", None, "unknown")),
        ("Pony V7", ("unknown", None, "unknown")),
        ("Flux.2 Klein 9B", ("flux2", "klein-9b", "unknown")),
        ("Flux.2 Klein 4B Base", ("flux2", "klein-4b-base", "unknown")),
        ("Qwen", ("qwen_image", "image", "unknown")),
        ("ZImageTurbo", ("zimage", "turbo", "unknown")),
    ],
)
def test_civitai_base_model_names(base_model: str, expected: tuple[str, str | None, str]) -> None:
    assert arch.from_base_model(base_model) == expected


def test_air_ecosystems_map_to_their_architecture() -> None:
    assert [arch.from_ecosystem(e) for e in ("sd1", "pony", "illustrious", "flux1", "fluxkrea", "sd3", "qwen")] == [
        "sd15", "sdxl", "sdxl", "flux", "flux", "sd3", "qwen_image"
    ]
    assert {name: arch.ecosystem_of(name) for name in arch.ARCHITECTURES} == {
        "sd15": "sd1", "sdxl": "sdxl", "sd3": "sd3", "flux": "flux1", "zimage": "zimageturbo",
        "qwen_image": "qwen", "flux2": "flux2",
    }


def test_size_rules() -> None:
    flux, sd15, sdxl = arch.get("flux"), arch.get("sd15"), arch.get("sdxl")
    assert flux and sd15 and sdxl and flux.size and sd15.size and sdxl.size
    assert flux.size.side_problem(1000) == (992, 1008)
    assert flux.size.side_problem(1024) is None
    assert sd15.size.side_problem(1000) is None and sd15.size.side_problem(1001) == (1000, 1008)
    assert sd15.size.area_problem(1024, 1024) == "large" and sdxl.size.area_problem(512, 512) == "small"
    # FLUX's presets reach about 2 megapixels; every architecture's presets pass its own rule.
    assert max(int(w) * int(h) for w, h in (v.split("x") for _, v in flux.size.presets)) >= 1.9e6
    for spec in arch.ARCHITECTURES.values():
        assert spec.size is not None
        for _label, value in spec.size.presets:
            width, height = (int(x) for x in value.split("x"))
            assert spec.size.side_problem(width) is None and spec.size.side_problem(height) is None, (spec.name, value)
            assert spec.size.area_problem(width, height) is None, (spec.name, value)


def test_flux_defaults_per_variant() -> None:
    flux = arch.get("flux")
    assert flux is not None and flux.runnable  # RUNS = True since the runtime landed
    dev, schnell = flux.guidance_for("dev"), flux.guidance_for("schnell")
    assert (dev.kind, dev.default, dev.rows_per_image(3.5)) == ("distilled", 3.5, 1)
    assert (schnell.kind, flux.steps_for("schnell"), flux.steps_for("dev")) == ("none", 4, 28)
    assert (flux.budget_for("dev").tokens, flux.budget_for("schnell").tokens) == (512, 256)
    assert not flux.negative_for("dev") and not flux.clip_skip and not flux.embeddings
    sd = arch.get("sd15")
    assert sd is not None and sd.guidance.rows_per_image(7.0) == 2 and sd.guidance.rows_per_image(1.0) == 1


def test_nothing_is_listed_twice() -> None:
    """The protocol, the runnable set, Civitai's ecosystems and the size menu are the
    registry's own data, and no production module outside engine/arch names the SD pair."""
    from bot.sources.refs import ARCHITECTURE_ECOSYSTEMS, ECOSYSTEM_ARCHITECTURES
    from bot.ui.cogs.imagine import SIZES
    from engine.pipelines import PIPELINE_ARCH
    from engine.protocol import ARCHITECTURE_LABELS, ARCHITECTURES
    from engine.support import RUNNABLE_ARCHITECTURES

    assert ARCHITECTURES == (*arch.ARCHITECTURES, "unknown")
    assert set(ARCHITECTURE_LABELS) == set(ARCHITECTURES)
    assert RUNNABLE_ARCHITECTURES == arch.runnable() == tuple(a.name for a in arch.ARCHITECTURES.values() if a.runnable)
    assert sorted(PIPELINE_ARCH.values()) == sorted(RUNNABLE_ARCHITECTURES)
    for spec in arch.ARCHITECTURES.values():
        assert all(ECOSYSTEM_ARCHITECTURES[e] == spec.name for e in spec.ecosystems)
    assert ARCHITECTURE_ECOSYSTEMS == {n: arch.ecosystem_of(n) for n in arch.ARCHITECTURES}
    presets = {v for name in RUNNABLE_ARCHITECTURES for _, v in arch.ARCHITECTURES[name].size.presets}  # type: ignore[union-attr]
    assert {v for _, v in SIZES} - {"256x256"} == presets
    # Two different architecture names side by side ("sd15", "sdxl") is a list of them.
    listed = re.compile(r"""["'](sd15|sdxl|sd3|flux)["']\s*,\s*["'](?!\1["'])(sd15|sdxl|sd3|flux)["']""")
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("bot", "engine")
        for path in (ROOT / folder).rglob("*.py")
        if "arch" not in path.relative_to(ROOT).parts[1:2] and listed.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
    for path in sorted((ROOT / "data" / "schema").glob("*.sql"))[-1:]:
        assert "'sd15', 'sdxl'" not in path.read_text(encoding="utf-8")


def test_the_engine_checks_the_architectures_size_and_sampler_rules() -> None:
    """A direct caller of the engine meets the same rules the bot checks first."""
    from engine.protocol import EngineError, ErrorCode, Recipe
    from engine.validation import check_for_architecture

    recipe = Recipe(model="m.safetensors", prompt="a cat", width=1000, height=1024, sampler="Euler")
    check_for_architecture(recipe, "sd15", "Dream")
    with pytest.raises(EngineError, match="multiple of 16 .*992 or 1008") as caught:
        check_for_architecture(recipe, "flux", "Flux Dev")
    assert caught.value.code is ErrorCode.INVALID_RECIPE
    with pytest.raises(EngineError, match="sampler 'DPM\\+\\+ 2M Karras' does not run FLUX.1"):
        check_for_architecture(Recipe(model="m.safetensors", prompt="a", sampler="DPM++ 2M Karras"), "flux", "F")
    check_for_architecture(Recipe(model="m.safetensors", prompt="a", sampler="DPM++ 2M Karras"), "sdxl", "XL")


def test_an_architecture_can_add_what_its_jobs_must_share() -> None:
    """batch_key is the same for every architecture today; a module's batch_fields extends it."""
    import dataclasses

    from engine.protocol import Recipe
    from engine.recipe.batching import architecture_batch_key, batch_key

    recipe = Recipe(model="m.safetensors", prompt="a cat")
    assert architecture_batch_key(recipe, "sdxl") == batch_key(recipe)
    assert architecture_batch_key(recipe, "unknown") == batch_key(recipe)
    spec = arch.ARCHITECTURES["flux"]
    patched = dataclasses.replace(spec, batch_fields=lambda r: (len(r.prompt) > 100,))
    arch.ARCHITECTURES["flux"] = patched
    try:
        assert architecture_batch_key(recipe, "flux") == (*batch_key(recipe), False)
    finally:
        arch.ARCHITECTURES["flux"] = spec


def test_runtimes_are_found_through_the_registry() -> None:
    from engine.arch.runtime import Runtime

    sd15, sdxl = arch.runtime_of("sd15"), arch.runtime_of("sdxl")
    assert isinstance(sd15, Runtime) and isinstance(sdxl, Runtime)
    assert (sd15.architecture, sdxl.architecture) == ("sd15", "sdxl")
    recipe = type("R", (), {"cfg_scale": 7.0})()
    assert sd15.rows_per_image(recipe) == 2
    recipe.cfg_scale = 1.0
    assert sd15.rows_per_image(recipe) == 1
    flux = arch.runtime_of("flux")  # engine.arch.flux.RUNS is set: FLUX has its runtime
    assert isinstance(flux, Runtime) and flux.architecture == "flux"
    recipe.cfg_scale = 3.5  # distilled guidance is a model input: still one row per image
    assert flux.rows_per_image(recipe) == 1
    for name in ("sd3", "unknown"):
        with pytest.raises(LookupError):
            arch.runtime_of(name)


def test_clip_prompt_encoding_asks_the_architecture(demo_assets) -> None:
    """Which CLIPs read the prompt is the architecture's to say, not "the pipeline has a
    text_encoder_2" (FLUX's is T5): an architecture that reads T5 is refused by name."""
    from engine.pipelines import load_pipeline
    from engine.prompting.encode import PromptEncoder
    from engine.protocol import EngineError, ErrorCode

    sdxl, _ = load_pipeline(demo_assets.model_root / demo_assets.models["sdxl"])
    assert PromptEncoder(sdxl).sdxl and PromptEncoder(sdxl, architecture="sdxl").sdxl
    with pytest.raises(EngineError) as caught:
        PromptEncoder(sdxl, architecture="flux")
    assert caught.value.code is ErrorCode.ARCH_MISMATCH and "FLUX.1" in caught.value.message
