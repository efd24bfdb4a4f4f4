"""Registration takes only what the engine can run (issue 16), through the Discord double and
the real engine process. Since issue 18 FLUX.1 runs: its checkpoints and LoRAs in each layout
people bring register as FLUX.1 (and since issue 19 Z-Image, Qwen-Image and FLUX.2 Klein's as
theirs), while other diffusion transformers (SD 3, Chroma, HiDream) are refused at ``/model add`` and ``/lora add`` with what they are and what the engine runs,
and nothing is registered; SD 1.5 and SDXL files still register."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from engine.support import runs_text
from tests import dit_files
from tests.bot.conftest import SD15, SDXL, World
from tests.bot.test_admin_registry import run

RUNS = f"this engine runs {runs_text()} models only"


@contextmanager
def placed(root: Path, relative: str, build: Callable[[Path], Path]) -> Iterator[str]:
    """A file written into the engine's (session-wide) folder for one test, removed after."""
    path = root / relative
    build(path)
    try:
        yield relative
    finally:
        path.unlink()
        if not any(path.parent.iterdir()):
            path.parent.rmdir()


@pytest.mark.parametrize(
    "build",
    [dit_files.flux_bfl_checkpoint, lambda p: dit_files.flux_bfl_checkpoint(p, prefix="model.diffusion_model."),
     dit_files.flux_diffusers_transformer],
    ids=["bfl", "comfyui", "diffusers"],
)  # fmt: skip
async def test_model_add_registers_a_flux_checkpoint(world: World, demo_assets: Any, build: Callable[[Path], Path]) -> None:
    with placed(demo_assets.model_root, "flux-test/flux1-dev.safetensors", build) as file:
        text = await run(world, world.admin, "model", {"file": file, "name": "Flux Dev"}, "add")
    assert "Registered **Flux Dev**" in text and "I did not register it" not in text, text
    entry = await world.registry.models.get(world.guild.id, "Flux Dev")
    assert entry is not None and entry.architecture == "flux"
    assert world.double.violations == []


@pytest.mark.parametrize(
    "build",
    [dit_files.sd3_checkpoint, dit_files.chroma_checkpoint],
    ids=["sd3", "chroma"],
)  # fmt: skip
async def test_model_add_refuses_other_dit_checkpoints_naming_them(world: World, demo_assets: Any, build: Callable[[Path], Path]) -> None:
    with placed(demo_assets.model_root, "dit-test/model.safetensors", build) as file:
        text = await run(world, world.admin, "model", {"file": file, "name": "Other DiT"}, "add")
    assert f"`{file}` is a" in text and RUNS in text and "I did not register it" in text, text
    assert "SD 3" in text or "Chroma" in text
    assert f"pick an {runs_text(' or ')} checkpoint" in text
    assert await world.registry.models.get(world.guild.id, "Other DiT") is None
    assert [m.name for m in await world.registry.models.all(world.guild.id)] == sorted([SD15, SDXL])
    assert world.double.violations == []


@pytest.mark.parametrize(
    "build",
    [dit_files.flux_kohya_lora, dit_files.flux_diffusers_kohya_lora, dit_files.flux_peft_lora,
     lambda p: dit_files.flux_peft_lora(p, add_q_proj=True)],
    ids=["kohya", "kohya-diffusers-names", "peft", "peft-with-text-stream"],
)  # fmt: skip
async def test_lora_add_registers_a_flux_lora_in_every_layout(world: World, demo_assets: Any, build: Callable[[Path], Path]) -> None:
    with placed(demo_assets.lora_root, "flux-test/flux-style.safetensors", build) as file:
        text = await run(world, world.admin, "lora", {"file": file, "name": "flux-style"}, "add")
        entry = await world.registry.loras.get(world.guild.id, "flux-style")
    assert "I did not register it" not in text, text
    assert entry is not None and entry.architecture == "flux"


@pytest.mark.parametrize(
    "build",
    [dit_files.sd3_peft_lora, dit_files.hidream_lora],
    ids=["sd3", "hidream"],
)  # fmt: skip
async def test_lora_add_refuses_other_dit_loras_in_every_layout(world: World, demo_assets: Any, build: Callable[[Path], Path]) -> None:
    with placed(demo_assets.lora_root, "dit-test/dit-style.safetensors", build) as file:
        text = await run(world, world.admin, "lora", {"file": file, "name": "dit-style"}, "add")
    assert f"`{file}` is a LoRA for" in text and RUNS in text and "I did not register it" in text, text
    assert f"made for {runs_text(' or ')}" in text
    assert await world.registry.loras.get(world.guild.id, "dit-style") is None
    assert file not in await world.registry.loras.files(world.guild.id)


async def test_sd15_and_sdxl_files_still_register(world: World, demo_assets: Any) -> None:
    """Both models again (a single file and a diffusers folder) and a fresh copy of a LoRA."""
    for name in (SD15, SDXL):
        assert "Removed" in await run(world, world.admin, "model", {"name": name}, "remove")
    for arch, name in (("sd15", SD15), ("sdxl", SDXL)):
        text = await run(world, world.admin, "model", {"file": demo_assets.models[arch], "name": name}, "add")
        assert f"Registered **{name}**" in text, text
        entry = await world.registry.models.get(world.guild.id, name)
        assert entry is not None and entry.architecture == arch

    def copy(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(demo_assets.lora_root / demo_assets.lora("pixel-art-xl").file, path)
        return path

    with placed(demo_assets.lora_root, "copies/pixel-art-xl-copy.safetensors", copy) as file:
        text = await run(world, world.admin, "lora", {"file": file, "name": "pixel-copy"}, "add")
    assert "Registered **pixel-copy**" in text, text
    entry = await world.registry.loras.get(world.guild.id, "pixel-copy")
    assert entry is not None and entry.architecture == "sdxl"


def _component(kind: str) -> Callable[[Path], Path]:
    """A published component file in its real layout (sandbox builders, tiny widths)."""

    def build(path: Path) -> Path:
        from sandbox.flux2_builder import build_components as flux2_parts
        from sandbox.flux2_builder import write_bfl_vae
        from sandbox.qwen_image_builder import build_components, write_comfy_components

        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "flux2-vae":
            return write_bfl_vae(flux2_parts(0)["vae"], path)
        vae, text = write_comfy_components(path.parent, build_components(0, wan_vae=True))
        keep, drop = (vae, text) if kind == "qwen-vae" else (text, vae)
        drop.unlink()
        return keep.rename(path)

    return build


@pytest.mark.parametrize(
    ("kind", "what"),
    [("qwen-vae", "a VAE"), ("qwen-text", "a text encoder"), ("flux2-vae", "a VAE")],
)  # fmt: skip
async def test_model_add_names_a_published_component_and_where_it_goes(world: World, demo_assets: Any, kind: str,
                                                                       what: str) -> None:  # fmt: skip
    with placed(demo_assets.model_root, f"component-test/{kind}.safetensors", _component(kind)) as file:
        text = await run(world, world.admin, "model", {"file": file, "name": "Component"}, "add")
    assert f"`{file}` is {what}, not a base model" in text, text
    assert ("qwen-image-components/" if kind.startswith("qwen") else "flux2-components/") in text
    assert await world.registry.models.get(world.guild.id, "Component") is None
    assert world.double.violations == []
