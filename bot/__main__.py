"""``python -m bot`` runs the bot; ``python -m bot demo --out DIR`` runs the offline demo;
``python -m bot read-recipe FILE... [--json]`` prints the recipes found in image files.

Running the bot: ``DISCORD_TOKEN=... python -m bot [--config FILE] [--sync]``. It opens the
SQLite registry in the data folder, starts the engine as a child process with a generated
token (unless ``ATELIER_ENGINE_URL`` / ``ATELIER_ENGINE_URLS`` and ``ATELIER_ENGINE_TOKEN``
point at engines already running), connects to Discord, takes up the jobs a previous run left
in the database, and on Ctrl-C or SIGTERM stops the engine and closes the database (queued
jobs stay there and run at the next start). See :mod:`bot.config` for every setting.

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

    from bot import engine_token
    from bot.access import AccessPolicy
    from bot.app import AtelierBot
    from bot.config import BotConfig, ConfigError
    from bot.engine_process import EngineProcess, EngineStartError
    from bot.guild_lifecycle import DAY_S
    from bot.jobs import EngineLink
    from bot.registry import Registry
    from bot.safety import ImageSafety, load_classifier
    from bot.sources.civitai import CivitaiClient
    from bot.sources.fetcher import FetchSettings
    from engine.client import EngineClient
    from engine.protocol import EngineError

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
            "(or try the offline demo: `python -m bot demo --out demo-out`).",
            file=sys.stderr,
        )
        return 2
    if config.external_engines and not config.engine_token:
        print(
            "atelier: ATELIER_ENGINE_URL(S) is set but ATELIER_ENGINE_TOKEN is not. The engine answers "
            "only requests that carry its token: set ATELIER_ENGINE_TOKEN to the value the engine "
            "was started with.",
            file=sys.stderr,
        )
        return 2
    try:
        classifier = load_classifier(config.image_classifier)
    except RuntimeError as exc:
        print(f"atelier: {exc}", file=sys.stderr)
        return 2
    config.data_dir.mkdir(parents=True, exist_ok=True)
    registry = await Registry.open(config.database_path)
    engine_process: EngineProcess | None = None
    bot: AtelierBot | None = None
    try:
        links: list[EngineLink] = []
        if config.external_engines:
            token = config.engine_token
            links = [EngineLink(EngineClient(url, token=token)) for url in config.external_engines]
            for link in links:
                try:  # a wrong token is refused here, at start, not at the first /imagine
                    await link.client.health()
                except EngineError as exc:
                    if exc.code == "unauthorized":
                        print(f"atelier: {exc.message}", file=sys.stderr)
                        for other in links:
                            await other.client.close()
                        return 2
                    log.warning("the engine %s does not answer yet: %s", link.client, exc.message)
        else:
            token = config.engine_token or engine_token.load_or_create(config.engine_token_path)
            # Downloads are the engine's to make (it owns the LoRA folder): on only when the
            # operator turned fetching on, and only from the configured hosts.
            downloads = (
                ["--allow-downloads", "--download-hosts", ",".join(config.civitai_download_hosts)]
                if config.civitai_fetch
                else []
            )
            engine_process = EngineProcess(
                token=token,
                model_dir=config.model_dir,
                lora_dir=config.lora_dir,
                port=config.engine_port,
                python=config.engine_python,
                start_timeout=config.engine_start_timeout,
                extra_args=downloads,
            )
            log.info("starting the engine: %s", " ".join(engine_process.command()))
            try:
                await engine_process.start()
            except EngineStartError as exc:
                print(f"atelier: {exc}", file=sys.stderr)
                return 1
            links = [EngineLink(EngineClient(engine_process.url, token=token), engine_process)]
        bot = AtelierBot(
            registry=registry,
            engines=links,
            sync_guilds=config.sync_guilds,
            status_interval=config.status_interval,
            max_pending=config.max_pending,
            server_share=config.server_share,
            engine_depth=config.engine_depth,
            max_batch=config.engine_batch,
            stall_limit=config.stall_limit,
            retry_wait=config.retry_wait,
            result_retry=config.result_retry,
            force_sync=force_sync,
            access=AccessPolicy.from_config(
                allowed_guilds=config.allowed_guilds, shares=config.shares, owners=config.owners
            ),
            safety=ImageSafety(classifier),
            data_grace_s=config.data_grace_days * DAY_S,
            leave_other_guilds=config.leave_other_guilds,
            civitai=CivitaiClient(config.civitai_url, token=config.civitai_token),
            fetch=FetchSettings(
                enabled=config.civitai_fetch,
                guilds=frozenset(config.civitai_fetch_guilds),
                max_file_bytes=config.civitai_max_file_size,
                quota_bytes=config.civitai_guild_quota,
                timeout_s=config.civitai_download_timeout,
                stall_s=config.civitai_stall_timeout,
                folder=config.civitai_folder,
                token=config.civitai_token,
            ),
        )
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
    finally:
        if bot is not None and not bot.is_closed():
            await bot.close()
        if bot is not None:
            for slot in bot.engines.slots:
                await slot.client.close()
        if engine_process is not None:
            await engine_process.stop()
        await registry.close()


#: The commands dispatched before argparse sees the arguments, and where the settings are.
_COMMANDS = """other commands:
  python -m bot demo --out DIR             play a scripted session offline (no token,
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
        from bot import read_recipe

        return read_recipe.main(args[1:])
    if args and args[0] == "demo":
        from bot import demo  # the lead's offline sandbox demo; imported only when asked for

        return int(demo.main(args[1:]) or 0)
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
