"""The real ``python -m bot`` entry point in its own process, pointed at a Discord double.

``python -m tests.bot.bot_child --api URL --gateway URL [--report PATH]`` with the bot's
settings in the environment (``DISCORD_TOKEN``, ``ATELIER_DATA_DIR``, ``ATELIER_ENGINE_URLS``,
...), exactly as an operator would give them. The only difference from ``python -m bot`` is
that discord.py's two addresses point at the double. On SIGUSR1 it writes
``{"torch": bool, ...}`` to the report path, so a test can ask a running bot which heavy
modules it has imported. SIGTERM stops it gracefully; tests also SIGKILL it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys


def report(path: str) -> None:
    heavy = ("torch", "diffusers", "transformers", "peft", "safetensors", "numpy")
    data: dict[str, object] = {name: name in sys.modules for name in heavy}
    data["modules"] = len(sys.modules)
    # Written aside then renamed: the test polls for the file and must never read it half-written.
    partial = f"{path}.partial"
    with open(partial, "w") as fh:
        json.dump(data, fh)
    os.replace(partial, path)


async def main(args: argparse.Namespace) -> int:
    import discord
    import yarl
    from discord.gateway import DiscordWebSocket

    from bot.__main__ import run

    discord.http.Route.BASE = args.api
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(args.gateway)
    if args.report:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, report, args.report)
    return await run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--api", required=True)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--report", default="")
    sys.exit(asyncio.run(main(parser.parse_args())))
