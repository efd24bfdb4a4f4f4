"""Qwen-Image and FLUX.2 Klein (issue 19): recognised from their files and Civitai's names;
FLUX.1 files are never taken for them (Klein 4B shares FLUX.1's width and BFL names: its MLP proportions tell)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from engine import arch
from engine.inspect import inspect_file
from tests import dit_files


@pytest.mark.parametrize(
    ("build", "kind", "architecture", "variant"),
    [
        (lambda p: dit_files.flux2_kohya_lora(p, width=dit_files.KLEIN_4B_WIDTH), "lora", "flux2", "klein-4b"),
        (lambda p: dit_files.flux2_kohya_lora(p, width=dit_files.KLEIN_9B_WIDTH, mlp=False), "lora", "flux2", "klein-9b"),
        (dit_files.flux2_diffusers_lora, "lora", "flux2", None),
        (lambda p: dit_files.flux2_bfl_checkpoint(p, width=dit_files.KLEIN_4B_WIDTH // 32), "checkpoint", "flux2", None),
        (dit_files.qwen_image_checkpoint, "checkpoint", "qwen_image", None),
        (lambda p: dit_files.qwen_image_checkpoint(p, prefix="model.diffusion_model."), "checkpoint", "qwen_image", None),
        (dit_files.qwen_image_kohya_lora, "lora", "qwen_image", None),
        (dit_files.qwen_image_lora, "lora", "qwen_image", None),
        # FLUX.1 stays FLUX.1: its 4x MLP, 3072 wide
        (dit_files.flux_kohya_lora, "lora", "flux", None),
        (dit_files.flux_bfl_checkpoint, "checkpoint", "flux", "dev"),
    ],
)
def test_files_are_recognised_by_their_layout_and_shapes(
    tmp_path: Path, build: Callable[[Path], Path], kind: str, architecture: str, variant: str | None
) -> None:
    info = inspect_file(build(tmp_path / "file.safetensors"))
    assert (info.kind, info.architecture, info.variant) == (kind, architecture, variant)


@pytest.mark.parametrize(("width", "variant"), [(3072, "klein-4b"), (4096, "klein-9b"), (6144, "dev")])
def test_a_flux2_checkpoint_says_its_size(tmp_path: Path, width: int, variant: str) -> None:
    from engine.arch.flux2 import checkpoint_variant

    assert checkpoint_variant({"img_in.weight": {"shape": [width, 128]}}) == variant


def test_klein_and_qwen_image_files_register(tmp_path: Path) -> None:
    info = inspect_file(dit_files.flux2_kohya_lora(tmp_path / "klein.safetensors", width=dit_files.KLEIN_9B_WIDTH))
    assert (info.architecture, info.cannot_run) == ("flux2", None)
    info = inspect_file(dit_files.qwen_image_kohya_lora(tmp_path / "qwen.safetensors"))
    assert (info.architecture, info.cannot_run) == ("qwen_image", None)


def test_civitai_names_and_ecosystems() -> None:
    assert arch.from_base_model("Flux.2 Klein 4B") == ("flux2", "klein-4b", "unknown")
    assert arch.from_base_model("Flux.2 Klein 9B Base") == ("flux2", "klein-9b-base", "unknown")
    assert arch.from_base_model("Flux.2 D") == ("flux2", "dev", "unknown")
    assert arch.from_base_model("Flux.1 D") == ("flux", "dev", "unknown")
    assert arch.from_base_model("Qwen") == ("qwen_image", "image", "unknown")
    assert arch.from_base_model("Qwen Image Edit") == ("qwen_image", "edit", "unknown")
    assert [arch.from_ecosystem(e) for e in ("flux2klein_4b", "flux2klein_9b_base", "flux2", "qwen")] == [
        "flux2", "flux2", "flux2", "qwen_image"
    ]  # fmt: skip
    assert arch.from_pipeline_class("Flux2KleinPipeline") == ("flux2", None)
    assert arch.from_pipeline_class("QwenImageEditPipeline") == ("qwen_image", "edit")
    qwen = arch.ARCHITECTURES["qwen_image"]
    assert qwen.guidance.kind == "cfg" and qwen.uses_negative and qwen.default_steps == 50
