"""The bot alone in its own process, pointed at a Discord double, for the torch/RSS check.

``python -m tests.bot.bot_child --api URL --gateway URL --token T --engine URL --db PATH
--report PATH``. On SIGUSR1 it writes ``{"torch": bool, ...}`` to the report path, so the
test can ask a running bot which heavy modules it has imported. SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys


async def main(args: argparse.Namespace) -> None:
    import discord
    import yarl
    from discord.gateway import DiscordWebSocket

    from bot.app import AtelierBot
    from bot.registry import Registry
    from engine.client import EngineClient

    discord.http.Route.BASE = args.api
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(args.gateway)
    registry = await Registry.open(args.db)
    # The token comes in the environment, as it would for the real bot (never on a command line).
    engine = EngineClient(args.engine, token=os.environ["ATELIER_ENGINE_TOKEN"])
    bot = AtelierBot(registry=registry, engine=engine, guild_ready_timeout=0.1, status_interval=0.5)

    def report() -> None:
        heavy = ("torch", "diffusers", "transformers", "peft", "safetensors", "numpy")
        data = {name: name in sys.modules for name in heavy}
        data["modules"] = len(sys.modules)
        # Written aside then renamed: the test polls for the file and must never read it half-written.
        partial = f"{args.report}.partial"
        with open(partial, "w") as fh:
            json.dump(data, fh)
        os.replace(partial, args.report)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, report)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    runner = asyncio.create_task(bot.start(args.token))
    await asyncio.wait({runner, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    await bot.close()
    await engine.close()
    await registry.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("api", "gateway", "token", "engine", "db", "report"):
        parser.add_argument(f"--{name}", required=True)
    asyncio.run(main(parser.parse_args()))
