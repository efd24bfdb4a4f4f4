"""The trained demo weights that ship in ``sandbox/demo_weights`` and how the demo installs them.

``python -m sandbox train-demo`` makes them (minutes on a GPU, never in ``make demo``,
``make test`` or CI); ``README.md`` in that folder says how these were made. The builder
copies them into a model folder as a user would lay out their own files: the checkpoint with
its config sidecar (a tiny model needs its own configs), the LoRAs under ``loras/sd15``.
No torch here: the demo's bot process may import it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WEIGHTS = Path(__file__).resolve().parents[1] / "demo_weights"
CHECKPOINT = "atelier-demo-sd15.safetensors"


@dataclass(frozen=True)
class TrainedLora:
    """A shipped LoRA as the demo's admin registers it."""

    name: str
    trigger_words: tuple[str, ...]
    category: str
    description: str

    @property
    def file(self) -> str:
        return f"{self.name}.safetensors"


#: The LoRAs that ship (pixel-art was trained for one step only, so it is not shipped: see
#: demo_weights/README.md).
TRAINED_LORAS = (
    TrainedLora("sepia", ("sepia photo",), "style", "An old photograph: every colour in warm sepia browns."),
    TrainedLora("captain-nova", ("captain nova",), "character",
                "Captain Nova, a space explorer in a purple suit and red scarf, standing large in the scene."),
)  # fmt: skip


def available(folder: Path = WEIGHTS) -> bool:
    """Whether the trained weights are present (all of them)."""
    return (folder / CHECKPOINT).is_file() and (folder / "configs.json").is_file() and all(
        (folder / lora.file).is_file() for lora in TRAINED_LORAS
    )


def configs(folder: Path = WEIGHTS) -> dict[str, dict[str, Any]]:
    return dict(json.loads((folder / "configs.json").read_text(encoding="utf-8")))


def install(model_root: Path, lora_root: Path, folder: Path = WEIGHTS) -> tuple[str, list[str]]:
    """Copy the checkpoint (with its config sidecar) and the LoRAs into the given folders.

    Returns the checkpoint's file name (relative to ``model_root``) and the LoRA files
    (relative to ``lora_root``).
    """
    from engine.component_configs import config_sidecar, write_config_folder

    if not available(folder):
        raise FileNotFoundError(
            f"the trained demo weights are missing from {folder}; restore them from git, or make "
            "new ones with `python -m sandbox train-demo --out DIR --device cuda`"
        )
    model_root.mkdir(parents=True, exist_ok=True)
    target = model_root / CHECKPOINT
    shutil.copyfile(folder / CHECKPOINT, target)
    write_config_folder(config_sidecar(target), "sd15", configs(folder))
    files = []
    (lora_root / "sd15").mkdir(parents=True, exist_ok=True)
    for lora in TRAINED_LORAS:
        shutil.copyfile(folder / lora.file, lora_root / "sd15" / lora.file)
        files.append(f"sd15/{lora.file}")
    return CHECKPOINT, files
