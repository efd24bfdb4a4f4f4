"""Admin commands over everything registered, through the Discord double: /model edit, remove,
enable and disable, /lora enable and disable, removal naming the saved recipes it breaks, /audit,
and the refusals members get."""

from __future__ import annotations

import json
import shutil
from typing import Any

from bot.ui.cogs.model import MODEL_EDIT_FIELDS
from sandbox.discord_double import InteractionHandle
from tests.bot.conftest import SD15, SDXL, World, png_parameters
from tests.bot.test_imagine_flow import is_result


async def answer(handle: InteractionHandle) -> str:
    """Everything an ephemeral answer says: content, embed titles, descriptions and fields."""
    if await handle.wait_response(3) == 4:  # answered at once (a refused check), not deferred
        data = handle.response_payloads[-1]["data"]
        content, found_embeds = data.get("content") or "", data.get("embeds") or []
    else:
        message = await handle.wait_followup()
        content, found_embeds = message.content, message.embeds
    parts = [content]
    for embed in found_embeds:
        parts += [embed.get("title") or "", embed.get("description") or ""]
        parts += [f"{f['name']}: {f['value']}" for f in embed.get("fields") or []]
    return "\n".join(parts)


async def run(world: World, who: Any, command: str, options: dict[str, Any], subcommand: str | None = None) -> str:
    handle = await world.double.slash(who, world.channel, command, options, subcommand=subcommand)
    return await answer(handle)


async def test_model_edit_changes_defaults_and_channels_and_is_audited(world: World) -> None:
    other = world.double.add_channel(world.guild, "gallery")
    text = await run(
        world,
        world.admin,
        "model",
        {
            "name": SD15,
            "size": "320x448",
            "steps": 3,
            "cfg": 5.5,
            "sampler": "Euler a",
            "negative": "blurry, lowres",
            "channels": f"<#{world.channel.id}>",
        },
        "edit",
    )
    assert f"Updated **{SD15}**" in text and "320×448" in text
    entry = await world.registry.models.get(world.guild.id, SD15)
    assert entry is not None
    assert (entry.default_width, entry.default_height, entry.default_steps, entry.default_cfg) == (320, 448, 3, 5.5)
    assert (entry.default_sampler, entry.default_negative) == ("Euler a", "blurry, lowres")
    assert entry.allowed_channel_ids == frozenset({world.channel.id})

    # The new defaults reach a generation: no steps, size or sampler given.
    handle = await world.double.slash(world.alice, world.channel, "imagine", {"prompt": "a kite"})
    assert await handle.wait_response(3) == 5
    result = await world.double.wait_for_message(world.channel, is_result, within=90)
    (embed,) = result.embeds
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert (fields["Steps"], fields["Size"], fields["Sampler"]) == ("3", "320×448", "Euler a")
    assert "blurry, lowres" in embed["description"]

    # Bad values are refused with what to type, and change nothing.
    refused = await run(world, world.admin, "model", {"name": SD15, "size": "big", "channels": "#nowhere"}, "edit")
    assert "Nothing was changed" in refused and "832x1216" in refused and "typing `#`" in refused
    refused = await run(world, world.admin, "model", {"name": SD15, "channels": f"<#{123456789012345678}>"}, "edit")
    assert "not a channel of this server" in refused
    assert (await world.registry.models.get(world.guild.id, SD15)).allowed_channel_ids == {world.channel.id}  # type: ignore[union-attr]
    await run(world, world.admin, "model", {"name": SD15, "channels": "all", "negative": "none"}, "edit")
    entry = await world.registry.models.get(world.guild.id, SD15)
    assert entry is not None and entry.allowed_channel_ids == frozenset() and entry.default_negative == ""
    assert other.id not in entry.allowed_channel_ids

    # A rename carries the server's default model with it.
    await run(world, world.admin, "model", {"name": SD15, "new_name": "tiny-one"}, "edit")
    assert (await world.registry.settings.get(world.guild.id)).default_model == "tiny-one"

    log = await run(world, world.admin, "audit", {"entry": SD15})
    assert "model.update" in log and "default_cfg: 7.0 → 5.5" in log and f"<@{world.admin.user.id}>" in log
    assert world.double.violations == []


async def test_members_get_refusals_and_see_no_admin_names(world: World) -> None:
    for subcommand, options in [
        ("edit", {"name": SD15, "steps": 9}),
        ("remove", {"name": SD15}),
        ("disable", {"name": SD15}),
        ("enable", {"name": SD15}),
    ]:
        assert "Manage Server" in await run(world, world.alice, "model", options, subcommand)
    for subcommand in ("enable", "disable", "remove"):
        assert "Manage Server" in await run(world, world.alice, "lora", {"name": "watercolor"}, subcommand)
    with_permission = world.double.slash(world.alice, world.channel, "audit", {}, bypass_permissions=True)
    assert "Manage Server" in await answer(await with_permission)
    assert await world.double.autocomplete(world.alice, world.channel, "model", {"name": ""}, "name", subcommand="edit") == []
    entry = await world.registry.models.get(world.guild.id, SD15)
    assert entry is not None and entry.enabled and entry.default_steps == 2
    assert (await world.registry.loras.get(world.guild.id, "watercolor")).enabled  # type: ignore[union-attr]
    assert await world.registry.audit.entries(world.guild.id, actor_id=world.alice.user.id) == []


async def test_disable_enable_and_remove_say_what_they_break(world: World) -> None:
    text = await run(world, world.admin, "model", {"name": SDXL}, "disable")
    assert "disabled" in text
    handle = await world.double.slash(world.alice, world.channel, "imagine", {"prompt": "x", "model": SDXL})
    assert "disabled" in (await handle.wait_followup()).content
    choices = await world.double.autocomplete(world.admin, world.channel, "model", {"name": "tiny"}, "name", subcommand="edit")
    assert SDXL in {c["value"] for c in choices}  # admins still find it to enable it again
    assert "enabled" in await run(world, world.admin, "model", {"name": SDXL}, "enable")

    await run(world, world.admin, "lora", {"name": "pixel-art"}, "disable")
    assert not (await world.registry.loras.get(world.guild.id, "pixel-art")).enabled  # type: ignore[union-attr]
    await run(world, world.admin, "lora", {"name": "pixel-art"}, "enable")

    # Two members saved recipes with the model and a LoRA; removing them names those recipes.
    recipe = {
        "model": "sd15-tiny.safetensors", "model_name": SD15, "prompt": "p",
        "loras": [{"file": "sd15/watercolor.safetensors", "weight": 0.7, "name": "watercolor", "sha256": None}],
    }  # fmt: skip
    await world.registry.saved_recipes.save(world.guild.id, world.alice.user.id, "harbour", recipe)
    await world.registry.saved_recipes.save(world.guild.id, world.bob.user.id, "storm", {**recipe, "loras": []})
    text = await run(world, world.admin, "lora", {"name": "watercolor"}, "remove")
    assert "Removed **watercolor**" in text and "1 saved recipe(s)" in text
    assert f"<@{world.alice.user.id}>'s **harbour**" in text and "storm" not in text
    text = await run(world, world.admin, "model", {"name": SD15}, "remove")
    assert "2 saved recipe(s)" in text and "**harbour**" in text and "**storm**" in text
    assert "default model" in text  # it was, so /imagine without a model needs a new one
    assert await world.registry.models.get(world.guild.id, SD15) is None
    assert (await world.registry.settings.get(world.guild.id)).default_model is None

    log = [e.action for e in await world.registry.audit.entries(world.guild.id)]
    assert log[:3] == ["settings.update", "model.remove", "lora.remove"]
    text = await run(world, world.admin, "audit", {"member": world.admin.user, "count": 5})
    assert "model.remove" in text and "lora.remove" in text
    assert world.double.violations == []


async def test_lora_edit_still_takes_several_fields_at_once(world: World) -> None:
    text = await run(
        world,
        world.admin,
        "lora",
        {"name": "watercolor", "trigger_words": "wc, soft", "min_weight": 0.2, "max_weight": 0.9, "category": "style"},
        "edit",
    )
    assert "Updated **watercolor**" in text
    entry = await world.registry.loras.get(world.guild.id, "watercolor")
    assert entry is not None and entry.trigger_words == ("wc", "soft")
    assert (entry.recommended_min, entry.recommended_max, entry.category.value) == (0.2, 0.9, "style")
    (update,) = [e for e in await world.registry.audit.entries(world.guild.id) if e.action == "lora.update"]
    assert update.details["recommended_max"] == [1.0, 0.9]


def test_a_model_field_is_one_line_in_the_table() -> None:
    """Other issues add per-model fields (VAE, clip skip...): each is one EditField, and the
    command's options are exactly the table's."""
    from bot.ui.cogs.model import model_edit

    options = [p.name for p in model_edit.parameters]
    assert options == ["name", *(f.option for f in MODEL_EDIT_FIELDS)]
    assert all(not p.required for p in model_edit.parameters[1:])
    payload = json.dumps(model_edit.to_dict(None))  # type: ignore[arg-type]
    assert '"max_value": 30.0' in payload  # the CFG bound is the engine's


async def test_issue_9_fields_are_edited_with_the_rest(world: World) -> None:
    """Family, clip skip and prediction type (issue 9) are lines of the same table."""
    text = await run(
        world, world.admin, "model", {"name": SD15, "family": "pony", "clip_skip": 2, "prediction": "v_prediction", "steps": 4}, "edit"
    )
    assert "Updated" in text
    entry = await world.registry.models.get(world.guild.id, SD15)
    assert entry is not None
    assert (entry.family, entry.default_clip_skip, entry.prediction_type, entry.default_steps) == ("pony", 2, "v_prediction", 4)
    await run(world, world.admin, "model", {"name": SD15, "prediction": "auto"}, "edit")
    assert (await world.registry.models.get(world.guild.id, SD15)).prediction_type == ""  # type: ignore[union-attr]


async def test_model_add_reads_its_vae_before_registering(world: World, demo_assets: Any) -> None:
    """A VAE named in /model add is read first: missing or not a VAE is refused, nothing is
    registered; a real VAE (ldm keys, as standalone VAEs are shipped) registers and is used."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    root = demo_assets.model_root
    checkpoint = root / demo_assets.models["sd15"]
    folder = root / "vae-under-test"
    with safe_open(str(checkpoint), "np") as f:
        prefix = "first_stage_model."
        tensors = {key.removeprefix(prefix): f.get_tensor(key) for key in f.keys() if key.startswith(prefix)}
    folder.mkdir()
    save_file(tensors, str(folder / "own.safetensors"))
    try:
        assert "Removed" in await run(world, world.admin, "model", {"name": SD15}, "remove")
        file = demo_assets.models["sd15"]
        missing = await run(world, world.admin, "model", {"file": file, "name": SD15, "vae": "vae-under-test/none.safetensors"}, "add")
        assert "I could not read the VAE `vae-under-test/none.safetensors`" in missing, missing
        not_vae = await run(world, world.admin, "model", {"file": file, "name": SD15, "vae": demo_assets.models["sdxl"]}, "add")
        assert "is a full model (checkpoint), not a VAE, so I did not register the model" in not_vae, not_vae
        assert await world.registry.models.get(world.guild.id, SD15) is None

        added = await run(world, world.admin, "model", {"file": file, "name": SD15, "vae": "vae-under-test/own.safetensors"}, "add")
        assert f"Registered **{SD15}**" in added and "VAE: `vae-under-test/own.safetensors`" in added, added
        entry = await world.registry.models.get(world.guild.id, SD15)
        assert entry is not None and entry.vae == "vae-under-test/own.safetensors"
        handle = await world.double.slash(world.alice, world.channel, "imagine", {"prompt": "a lamp", "model": SD15, "steps": 2, "size": "256x256"})
        assert await handle.wait_response(3) == 5
        result = await world.double.wait_for_message(world.channel, is_result, within=90)
        assert "VAE: own" in png_parameters(result.attachments[0].data)
    finally:
        shutil.rmtree(folder)
