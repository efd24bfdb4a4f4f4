"""Sampling profiles on registry entries (issue 21): proposed from the file at registration,
stored, edited, and refused where the model could not run them."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from bot.registry import LoraEntry, ModelEntry, Registry, RegistryError
from engine.inspect import inspect_file

from .conftest import ADMIN, GUILD, lora, model


def speed_lora(demo_root: Path, folder: Path, name: str, metadata: dict[str, str] | None = None) -> Path:
    """A tiny SDXL LoRA saved under ``name`` (UNet only, diffusers keys, as ByteDance ships theirs)."""
    state = {k: v for k, v in load_file(str(demo_root / "sdxl" / "twin-diffusers.safetensors")).items()
             if k.startswith("unet.")}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / name), metadata=metadata)
    return folder / name


def test_a_lightning_lora_is_proposed_its_profile_from_its_file_name(demo_assets, tmp_path: Path) -> None:
    path = speed_lora(demo_assets.lora_root, tmp_path, "sdxl_lightning_4step_lora.safetensors")
    info = inspect_file(path, relative_to=tmp_path)
    assert info.architecture == "sdxl"
    assert LoraEntry.from_file_info(info).speed_profile == "sdxl-lightning-4step"
    # The admin's choice wins over the proposal (None: no profile).
    assert LoraEntry.from_file_info(info, speed_profile=None).speed_profile is None
    # Renamed, its kohya output name still says what it is.
    renamed = speed_lora(demo_assets.lora_root, tmp_path, "fast.safetensors", {"ss_output_name": "Hyper-SDXL-8steps-CFG-lora"})
    assert LoraEntry.from_file_info(inspect_file(renamed, relative_to=tmp_path)).speed_profile == "hyper-sdxl-8steps-cfg"
    # An SD 1.5 profile is not proposed for an SDXL file, whatever its name says.
    wrong = speed_lora(demo_assets.lora_root, tmp_path, "lcm-lora-sdv1-5.safetensors")
    assert LoraEntry.from_file_info(inspect_file(wrong, relative_to=tmp_path)).speed_profile is None
    # Civitai's baseModel is used when the name says nothing.
    plain = inspect_file(speed_lora(demo_assets.lora_root, tmp_path, "x.safetensors"), relative_to=tmp_path)
    assert LoraEntry.from_file_info(plain, base_model="SDXL 1.0 LCM").speed_profile == "lcm-sdxl"
    assert LoraEntry.from_file_info(plain).speed_profile is None


async def test_profiles_are_stored_and_edited(registry: Registry) -> None:
    added = await registry.loras.add(GUILD, lora("lightning", "sdxl", speed_profile="sdxl-lightning-4step"), ADMIN)
    assert (await registry.loras.get(GUILD, "lightning")).speed_profile == "sdxl-lightning-4step"  # type: ignore[union-attr]
    catalog = await registry.catalogs.get(GUILD)
    assert catalog.lora("lightning").speed_profile == "sdxl-lightning-4step"  # type: ignore[union-attr]
    edited = await registry.loras.update(GUILD, added.name, ADMIN, speed_profile="tcd-sdxl")
    assert edited.speed_profile == "tcd-sdxl"
    cleared = await registry.loras.update(GUILD, added.name, ADMIN, speed_profile=None)
    assert cleared.speed_profile is None
    turbo = await registry.models.add(GUILD, model("schnell", "flux", variant="schnell", speed_profile="flux-schnell",
                                                   fast_with=None), ADMIN)  # fmt: skip
    assert (await registry.models.get(GUILD, turbo.name)).speed_profile == "flux-schnell"  # type: ignore[union-attr]
    # A Lightning merge (or ByteDance's whole 4-step checkpoint) runs on the LoRA's profile.
    merge = await registry.models.add(GUILD, model("merge", "sdxl", speed_profile="sdxl-lightning-4step"), ADMIN)
    assert merge.speed_profile == "sdxl-lightning-4step"
    base = await registry.models.add(GUILD, model("xl", "sdxl"), ADMIN)
    assert (await registry.models.update(GUILD, base.name, ADMIN, fast_with="lightning")).fast_with == "lightning"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (lora("a", "sdxl", speed_profile="no-such"), "Unknown sampling profile"),
        (lora("a", "sd15", speed_profile="sdxl-lightning-4step"), "made for sdxl models, not sd15"),
        (lora("a", "sdxl", speed_profile="flux-schnell"), "distilled checkpoint, not of a LoRA"),
        (lora("a", "flux", variant="schnell", speed_profile="hyper-flux-dev-8steps"), "variant, not schnell"),
        (model("m", "sd15", speed_profile="sdxl-lightning-4step"), "made for sdxl models, not sd15"),
    ],
)
async def test_a_profile_the_entry_cannot_run_is_refused(registry: Registry, entry: object, message: str) -> None:
    store = registry.loras if isinstance(entry, LoraEntry) else registry.models
    with pytest.raises(RegistryError, match=message):
        await store.add(GUILD, entry, ADMIN)  # type: ignore[arg-type]
    assert isinstance(entry, (LoraEntry, ModelEntry))
