"""``python -m bot`` runs the bot (the offline demo is the sandbox's: ``make demo``);
``python -m bot read-recipe FILE... [--json]`` prints the recipes found in image files.

Running the bot: ``DISCORD_TOKEN=... python -m bot [--config FILE] [--sync]``. It opens the
SQLite registry in the data folder, starts the engine as a child process with a generated
token (unless ``ATELIER_ENGINE_URL`` / ``ATELIER_ENGINE_URLS`` and ``ATELIER_ENGINE_TOKEN``
point at engines already running), connects to Discord, takes up the jobs a previous run left
in the database, and on Ctrl-C or SIGTERM stops the engine and closes the database (queued
jobs stay there and run at the next start). See :mod:`bot.operator.config` for every setting.

Creating the Discord application (for the README):

1. https://discord.com/developers/applications -> New Application -> Bot -> Reset Token;
   that token is ``DISCORD_TOKEN``. No privileged intents are needed (the bot only uses the
   Guilds intent: it reads no message content and no member lists).
2. OAuth2 -> URL Generator: scopes ``bot`` and ``applications.commands``; bot permissions
   View Channels, Send Messages, Embed Links, Attach Files, Read Message History
   (permissions integer ``117760``). Open the URL to invite the bot to a server.
3. Commands are synced globally when they changed since the last sync (can take up to an
   hour to appear; ``--sync`` forces a sync); set ``ATELIER_SYNC_GUILDS=<server id>`` to see
   them in that server at once while testing.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import signal
import socket
import sys
from collections.abc import Mapping, Sequence

log = logging.getLogger("bot")


async def run(
    config_file: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    stop: asyncio.Event | None = None,
    force_sync: bool = False,
) -> int:
    """Run until SIGINT/SIGTERM (or until ``stop`` is set, for tests and embedding)."""
    import aiohttp
    import discord

    from bot.assembly import StartError, assembled
    from bot.operator.config import BotConfig, ConfigError

    try:
        config = BotConfig.load(env=env, config_file=config_file)
    except ConfigError as exc:
        print(f"atelier: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not config.token:
        print(
            "atelier: no bot token. Create an application at https://discord.com/developers/applications, "
            "add a bot, copy its token and run `DISCORD_TOKEN=... python -m bot` "
            "(or try the offline demo from a source checkout: `make demo`).",
            file=sys.stderr,
        )
        return 2
    try:
        async with assembled(config, force_sync=force_sync) as bot:
            own_signals = stop is None
            stop = stop or asyncio.Event()
            loop = asyncio.get_running_loop()
            if own_signals:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(signum, stop.set)
            runner = asyncio.create_task(bot.start(config.token))
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if runner in done:
                exc = runner.exception()
                if isinstance(exc, discord.LoginFailure):
                    print("atelier: Discord refused the token; copy it again from the Bot page.", file=sys.stderr)
                    return 1
                if isinstance(exc, aiohttp.ClientConnectorError):
                    print(f"atelier: {unreachable(exc)}", file=sys.stderr)
                    return 1
                if exc is not None:
                    raise exc
            stopper.cancel()
            if own_signals:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)
            return 0
    except StartError as exc:
        print(f"atelier: {exc}", file=sys.stderr)
        return exc.code


#: The commands dispatched before argparse sees the arguments, and where the settings are.
_COMMANDS = """other commands:
  make demo  (python -m sandbox demo --out DIR, in a source checkout)
                                           play a scripted session offline (no token,
                                           no GPU) and write what the channel shows
  python -m bot read-recipe FILE [--json]  print the recipes found in image files
                                           from other tools (A1111, ComfyUI, ...)
  (each takes --help)

settings:
  Environment variables (DISCORD_TOKEN, ATELIER_*) or a TOML file given with
  --config; every key, its variable and its default are in the configuration
  table of README.md (section "Configuration"). The engine's own settings are
  listed by `python -m engine serve --help`.
"""


DEMO_MOVED = (
    "atelier: the offline demo runs from a source checkout: `make demo`, or "
    "`python -m sandbox demo --out DIR` (the sandbox is not part of the installed bot)."
)


def unreachable(exc: OSError) -> str:
    """One line for a Discord that cannot be reached (no DNS, refused, no route): the
    operator's network is at fault, and a traceback through aiohttp would not say so."""
    host = getattr(exc, "host", "") or "Discord"
    port = getattr(exc, "port", None)
    cause = getattr(exc, "os_error", None) or exc
    if isinstance(cause, socket.gaierror):
        reason = f"the name does not resolve: {cause.strerror}"
    elif isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == errno.ECONNREFUSED:
        reason = "connection refused"
    else:
        reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
    return (
        f"cannot reach Discord at {host}{f':{port}' if port else ''} ({reason}); check this "
        "machine's network connection, its DNS and any firewall or proxy, then start again."
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "read-recipe":
        from bot.recipes import read as read_recipe

        return read_recipe.main(args[1:])
    if args and args[0] == "demo":
        # The demo lives in the sandbox package (a source checkout's, never the wheel's): the
        # bot does not import it, so an installed bot carries no Discord double.
        print(DEMO_MOVED, file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="Run the Atelier Discord bot: DISCORD_TOKEN=... python -m bot\n"
        "It starts its engine unless ATELIER_ENGINE_URL(S) names engines already running.",
        epilog=_COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", metavar="FILE", help="TOML config file (the keys are in README.md, section Configuration)"
    )
    parser.add_argument(
        "--sync",
        action="store_true",
        help="sync slash commands with Discord even if they did not change since the last sync",
    )
    parsed = parser.parse_args(args)
    return asyncio.run(run(parsed.config, force_sync=parsed.sync))


if __name__ == "__main__":
    sys.exit(main())
