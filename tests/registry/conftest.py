"""Fixtures: a real registry on a SQLite file in tmp_path, and entry factories."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.registry import LoraEntry, ModelEntry, Registry

GUILD = 1001
OTHER_GUILD = 2002
ADMIN = 77


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    reg = await Registry.open(tmp_path / "registry.db")
    try:
        yield reg
    finally:
        await reg.close()


def lora(name: str, architecture: str = "sd15", **overrides: Any) -> LoraEntry:
    values: dict[str, Any] = {
        "name": name,
        "architecture": architecture,
        "file": f"{name.replace(' ', '_')}.safetensors",
    }
    values.update(overrides)
    return LoraEntry(**values)


def model(name: str, architecture: str = "sd15", **overrides: Any) -> ModelEntry:
    side = 1024 if architecture == "sdxl" else 512
    values: dict[str, Any] = {
        "name": name,
        "architecture": architecture,
        "file": f"{name.replace(' ', '_')}.safetensors",
        "default_width": side,
        "default_height": side,
    }
    values.update(overrides)
    return ModelEntry(**values)
