"""The real SD 1.5 / SDXL component configs, read from ``data/configs``: data, not code.

``from_single_file`` needs a local diffusers folder of configs (the engine never goes online),
and a checkpoint without its own sidecar folder gets one written from these files. The demo
builder reads the same files and shrinks them for its tiny models; the loader never imports
the builder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from engine.shipped_data import data_path

CONFIG_ROOT = data_path("configs")
#: The components of each pipeline, in ``model_index.json`` order (the tokenizers aside).
COMPONENTS = {
    "sd15": ("scheduler", "unet", "vae", "text_encoder"),
    "sdxl": ("scheduler", "unet", "vae", "text_encoder", "text_encoder_2"),
}


def read_config(arch: str, component: str) -> dict[str, Any]:
    """One component's shipped config (a fresh dict the caller may change)."""
    if arch not in COMPONENTS:
        raise ValueError(f"no shipped configs for {arch!r}; have {sorted(COMPONENTS)}")
    folder = CONFIG_ROOT / arch / component
    path = folder / ("scheduler_config.json" if component == "scheduler" else "config.json")
    return json.loads(path.read_text(encoding="utf-8"))


def shipped_configs(arch: str) -> dict[str, dict[str, Any]]:
    """Every component's real config for ``arch``."""
    return {component: read_config(arch, component) for component in COMPONENTS[arch]}


def write_config_folder(folder: Path, arch: str, configs: dict[str, dict[str, Any]]) -> Path:
    """A diffusers pipeline folder without weights: what ``from_single_file(config=...)`` reads."""
    from engine.tokenizer import write_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CONFIG_ROOT / arch / "model_index.json", folder / "model_index.json")
    for component, config in configs.items():
        sub = folder / component
        sub.mkdir(exist_ok=True)
        name = "scheduler_config.json" if component == "scheduler" else "config.json"
        (sub / name).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    write_tokenizer(folder / "tokenizer")
    if arch == "sdxl":
        write_tokenizer(folder / "tokenizer_2", pad_token="!")
    return folder


def config_sidecar(checkpoint: Path) -> Path:
    """Where a single-file checkpoint's own configs live (hidden, so listings skip it)."""
    return checkpoint.with_name(f".{checkpoint.name}.config")
