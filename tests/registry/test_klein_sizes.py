"""FLUX.2 Klein sizes in the registry (issue 19): a LoRA's size is read from its widths at
registration, and one made for the other size is refused at validation, before any job reaches
an engine; the same size (distilled or base) passes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from bot.registry import LoraEntry, ModelEntry, Registry
from bot.request.parse import build_request
from bot.request.validation import Validated, validate
from engine.inspect import inspect_file
from tests import dit_files

from .conftest import ADMIN, GUILD


def _request(**kw: Any) -> Any:
    values: dict[str, Any] = {"guild_id": GUILD, "channel_id": 1, "user_id": 2, "channel_is_nsfw": False,
                              "prompt": "a lighthouse in a storm"}  # fmt: skip
    values.update(kw)
    return build_request(**values)


async def test_a_lora_for_the_other_klein_size_is_refused_at_validation(registry: Registry, tmp_path: Path) -> None:
    model = inspect_file(dit_files.flux2_bfl_checkpoint(tmp_path / "m" / "klein.safetensors", width=32), relative_to=tmp_path / "m")
    # The tiny file's width names no size; the registry's variant is what Civitai or the admin says.
    for name, variant in (("Klein 4B", "klein-4b"), ("Klein 4B Base", "klein-4b-base")):
        await registry.models.add(GUILD, replace(ModelEntry.from_file_info(model, name=name), variant=variant), ADMIN)
    for name, width in (("Nine", dit_files.KLEIN_9B_WIDTH), ("Four", dit_files.KLEIN_4B_WIDTH)):
        info = inspect_file(dit_files.flux2_kohya_lora(tmp_path / "l" / f"{name}.safetensors", width=width), relative_to=tmp_path / "l")
        await registry.loras.add(GUILD, LoraEntry.from_file_info(info, name=name), ADMIN)
    nine, four = await registry.loras.get(GUILD, "Nine"), await registry.loras.get(GUILD, "Four")
    assert nine is not None and four is not None and (nine.variant, four.variant) == ("klein-9b", "klein-4b")
    catalog = await registry.catalogs.get(GUILD)
    refused = validate(_request(model="Klein 4B", slots=[("Nine", "1")]), catalog)
    assert not isinstance(refused, Validated)
    problem = next(p for p in refused.problems if p.code == "arch_mismatch")
    assert "trained for FLUX.2 Klein 9B and this model is FLUX.2 Klein 4B" in problem.message, problem.message
    for model_name in ("Klein 4B", "Klein 4B Base"):
        assert isinstance(validate(_request(model=model_name, slots=[("Four", "1")]), catalog), Validated)
