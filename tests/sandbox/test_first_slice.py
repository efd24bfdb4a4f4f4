from __future__ import annotations

from tests.sandbox.conftest import World
from tests.sandbox.sandbox_bot import png_bytes


async def test_slash_defers_then_follows_up_with_png(world: World) -> None:
    handle = await world.double.slash(world.alice, world.channel, "render", {"prompt": "a cat", "width": 12})
    assert await handle.wait_response(3) == 5
    message = await handle.wait_followup()
    assert message.content == "here is a cat"
    assert message.attachment("render.png").data == png_bytes(12)
    assert world.double.violations == []
