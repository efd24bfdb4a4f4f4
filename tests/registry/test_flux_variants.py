"""FLUX.1 variants stored on models and LoRAs (issue 18): read from the files at registration,
kept in the registry, and validation applies each variant's rules and warns across variants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.numpy import load_file, save_file

from bot.registry import LoraEntry, ModelEntry, Registry
from bot.request.parse import build_request
from bot.request.validation import Validated, validate
from engine.inspect import inspect_file
from tests import dit_files

from .conftest import ADMIN, GUILD


def _schnell(path: Path) -> Path:
    """BFL's schnell file: dev's layout without the guidance embedding (``guidance_in``)."""
    dit_files.flux_bfl_checkpoint(path)
    state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("guidance_in.")}
    save_file(state, str(path))
    return path


def _lora_for(path: Path, modelspec: str | None) -> Path:
    """kohya's FLUX LoRA; sd-scripts writes ``modelspec.architecture`` as ``flux-1-<variant>/lora``."""
    dit_files.flux_kohya_lora(path)
    metadata = {"ss_base_model_version": "flux1", "ss_network_module": "networks.lora_flux"}
    if modelspec:
        metadata["modelspec.architecture"] = modelspec
    save_file(load_file(str(path)), str(path), metadata=metadata)
    return path


async def _register(registry: Registry, tmp_path: Path) -> None:
    dev = inspect_file(dit_files.flux_bfl_checkpoint(tmp_path / "m" / "flux1-dev.safetensors"), relative_to=tmp_path / "m")
    schnell = inspect_file(_schnell(tmp_path / "m" / "flux1-schnell.safetensors"), relative_to=tmp_path / "m")
    assert (dev.variant, schnell.variant) == ("dev", "schnell")
    await registry.models.add(GUILD, ModelEntry.from_file_info(dev, name="Flux Dev"), ADMIN)
    await registry.models.add(GUILD, ModelEntry.from_file_info(schnell, name="Flux Schnell"), ADMIN)
    for name, spec in (("Fast Style", "flux-1-schnell/lora"), ("Dev Style", "flux-1-dev/lora"), ("Plain", None)):
        info = inspect_file(_lora_for(tmp_path / "l" / f"{name}.safetensors", spec), relative_to=tmp_path / "l")
        await registry.loras.add(GUILD, LoraEntry.from_file_info(info, name=name), ADMIN)


def _request(**kw: Any) -> Any:
    values: dict[str, Any] = {"guild_id": GUILD, "channel_id": 1, "user_id": 2, "channel_is_nsfw": False,
                              "prompt": "a lighthouse in a storm, oil painting"}  # fmt: skip
    values.update(kw)
    return build_request(**values)


async def test_variants_are_read_at_registration_and_stored(registry: Registry, tmp_path: Path) -> None:
    await _register(registry, tmp_path)
    dev, schnell = await registry.models.get(GUILD, "Flux Dev"), await registry.models.get(GUILD, "Flux Schnell")
    assert dev is not None and schnell is not None
    assert (dev.variant, dev.default_steps, dev.default_cfg) == ("dev", 28, 3.5)
    assert (schnell.variant, schnell.default_steps) == ("schnell", 4)
    loras = {name: await registry.loras.get(GUILD, name) for name in ("Fast Style", "Dev Style", "Plain")}
    assert {n: (lo.architecture, lo.variant) for n, lo in loras.items() if lo} == {
        "Fast Style": ("flux", "schnell"), "Dev Style": ("flux", "dev"), "Plain": ("flux", None),
    }  # fmt: skip


async def test_schnell_rules_apply_to_a_stored_schnell_model(registry: Registry, tmp_path: Path) -> None:
    """schnell has no guidance input: a CFG the member sets is noted as unused (and so is a
    negative prompt); dev reads the value as distilled guidance and says nothing."""
    await _register(registry, tmp_path)
    catalog = await registry.catalogs.get(GUILD)
    result = validate(_request(model="Flux Schnell", cfg=5.0, negative_prompt="blurry"), catalog)
    assert isinstance(result, Validated), result
    assert [n.code for n in result.notes] == ["cfg_ignored", "negative_ignored"]
    assert "FLUX.1" in result.notes[0].message and "not used" in result.notes[0].message
    assert (result.recipe.steps, result.recipe.cfg_scale) == (4, 1.0)  # what schnell runs at
    assert (result.recipe.architecture, result.recipe.variant) == ("flux", "schnell")
    on_dev = validate(_request(model="Flux Dev", cfg=5.0), catalog)
    assert isinstance(on_dev, Validated) and on_dev.notes == ()
    assert (on_dev.recipe.steps, on_dev.recipe.cfg_scale) == (28, 5.0)


async def test_a_lora_of_another_variant_is_warned_about(registry: Registry, tmp_path: Path) -> None:
    await _register(registry, tmp_path)
    catalog = await registry.catalogs.get(GUILD)
    result = validate(_request(model="Flux Dev", slots=[("Fast Style", "0.8"), ("Plain", "0.5")]), catalog)
    assert isinstance(result, Validated), result
    assert [n.code for n in result.notes] == ["variant_mismatch"]
    assert "`Fast Style` on `Flux Dev`: it was trained on FLUX.1 schnell and this model is FLUX.1 dev" in result.notes[0].message
    same = validate(_request(model="Flux Dev", slots=[("Dev Style", "0.8")]), catalog)
    assert isinstance(same, Validated) and same.notes == ()


async def test_a_kontext_lora_from_civitai_on_a_text_to_image_model_is_warned_about(registry: Registry, tmp_path: Path) -> None:
    """A fetched LoRA's variant comes from Civitai's baseModel (the fetcher passes it over the
    file's): a Flux.1 Kontext LoRA (an edit model's) on FLUX.1 dev is warned about."""
    await _register(registry, tmp_path)
    info = inspect_file(_lora_for(tmp_path / "l" / "kontext.safetensors", None), relative_to=tmp_path / "l")
    entry = LoraEntry.from_file_info(info, name="Relight", base_model="Flux.1 Kontext", variant="kontext")
    await registry.loras.add(GUILD, entry, ADMIN)
    result = validate(_request(model="Flux Dev", slots=[("Relight", "1")]), await registry.catalogs.get(GUILD))
    assert isinstance(result, Validated), result
    assert [n.code for n in result.notes] == ["variant_mismatch"]
    assert "made for editing a reference image rather than text-to-image" in result.notes[0].message
