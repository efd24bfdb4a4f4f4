"""Command sync: stored as Discord stores it, refused when it breaks Discord's rules."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from sandbox.discord_double import DiscordDouble
from tests.sandbox.conftest import World


async def test_sync_is_recorded_with_ids_and_options(world: World) -> None:
    commands = {c["name"]: c for c in world.double.registered_commands()}
    assert set(commands) >= {"render", "pick", "note", "twice", "bigembed", "hello", "whereami", "admin"}
    assert len({c["id"] for c in commands.values()}) == len(commands)
    assert commands["admin"]["default_member_permissions"] == str(0x20)
    assert commands["admin"]["options"][0]["type"] == 1  # the reset subcommand
    flavour = commands["pick"]["options"][0]
    assert flavour["name"] == "flavour" and flavour["autocomplete"] is True
    assert world.double.registered_commands(world.guild) == []
    put = world.double.requests_matching("PUT /applications/*/commands")
    assert [r.status for r in put] == [200]


async def test_resync_keeps_command_ids(world: World) -> None:
    before = {c["name"]: c["id"] for c in world.double.registered_commands()}
    await world.bot.tree.sync()
    after = {c["name"]: c["id"] for c in world.double.registered_commands()}
    assert before == after


def _command(**overrides: Any) -> dict[str, Any]:
    command: dict[str, Any] = {"name": "imagine", "description": "Make a picture", "type": 1, "options": []}
    command.update(overrides)
    return command


def _option(name: str, *, required: bool = False, **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": f"the {name}", "type": 3, "required": required, **extra}


BAD_COMMANDS = [
    (_command(name="Imagine"), ("0", "name")),
    (_command(name="x" * 33), ("0", "name")),
    (_command(description=""), ("0", "description")),
    (_command(description="d" * 101), ("0", "description")),
    (_command(options=[_option(f"o{i}") for i in range(26)]), ("0", "options")),
    (_command(options=[_option("a"), _option("b", required=True)]), ("0", "options", "1", "required")),
    (_command(options=[_option("a", choices=[{"name": f"c{i}", "value": f"{i}"} for i in range(26)])]),
     ("0", "options", "0", "choices")),
    (_command(options=[_option("a", choices=[{"name": "", "value": "v"}])]),
     ("0", "options", "0", "choices", "0", "name")),
    (_command(options=[_option("a", autocomplete=True, choices=[{"name": "n", "value": "v"}])]),
     ("0", "options", "0", "autocomplete")),
    (_command(default_member_permissions="manage"), ("0", "default_member_permissions")),
]


@pytest.mark.parametrize(("command", "error_path"), BAD_COMMANDS)
async def test_bulk_overwrite_refuses_what_discord_refuses(
    double: DiscordDouble, command: dict[str, Any], error_path: tuple[str, ...]
) -> None:
    url = f"{double.api_base}/applications/{double.application_id}/commands"
    headers = {"Authorization": f"Bot {double.token}"}
    async with aiohttp.ClientSession() as session, session.put(url, json=[command], headers=headers) as response:
        assert response.status == 400
        body = await response.json()
    assert body["code"] == 50035 and body["message"] == "Invalid Form Body"
    node = body["errors"]
    for part in error_path:
        node = node[part]
    assert node["_errors"], body
    assert double.registered_commands() == []
    assert double.violations[-1].kind == "invalid_commands"


async def test_duplicate_names_and_too_many_commands_are_refused(double: DiscordDouble) -> None:
    url = f"{double.api_base}/applications/{double.application_id}/commands"
    headers = {"Authorization": f"Bot {double.token}"}
    async with aiohttp.ClientSession() as session:
        async with session.put(url, json=[_command(), _command()], headers=headers) as response:
            assert response.status == 400
        many = [_command(name=f"c{i}") for i in range(101)]
        async with session.put(url, json=many, headers=headers) as response:
            assert response.status == 400
        async with session.put(url, json=[_command(options=[_option("a", required=True), _option("b")])],
                               headers=headers) as response:
            assert response.status == 200
    assert [c["name"] for c in double.registered_commands()] == ["imagine"]


async def test_admin_subcommand_carries_member_permissions(world: World) -> None:
    handle = await world.double.slash(world.admin, world.channel, "admin", {"confirm": True}, subcommand="reset")
    message = await handle.wait_original()
    assert message.content == "reset=True manage_guild=True"
    assert message.ephemeral
    option = handle.payload["data"]["options"][0]
    assert option["type"] == 1 and option["options"] == [{"name": "confirm", "type": 5, "value": True}]
    assert int(handle.payload["member"]["permissions"]) & 0x20


async def test_default_permissions_hide_the_command_from_plain_members(world: World) -> None:
    with pytest.raises(PermissionError):
        await world.double.slash(world.alice, world.channel, "admin", {"confirm": True}, subcommand="reset")
    handle = await world.double.slash(
        world.alice, world.channel, "admin", {"confirm": False}, subcommand="reset", bypass_permissions=True
    )
    assert (await handle.wait_original()).content == "reset=False manage_guild=False"


async def test_the_owner_has_every_permission(world: World) -> None:
    handle = await world.double.slash(world.guild.owner, world.channel, "admin", {"confirm": True}, subcommand="reset")
    assert (await handle.wait_original()).content == "reset=True manage_guild=True"


async def test_client_side_option_checks(world: World) -> None:
    with pytest.raises(ValueError, match="required"):
        await world.double.slash(world.alice, world.channel, "render", {})
    with pytest.raises(LookupError, match="no options"):
        await world.double.slash(world.alice, world.channel, "render", {"prompt": "x", "height": 3})
    with pytest.raises(LookupError, match="sync"):
        await world.double.slash(world.alice, world.channel, "nonexistent")
