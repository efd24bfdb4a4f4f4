"""The one way the running bot is put together from its settings.

``python -m bot``, the offline demo and the tests all build the bot here, so that what the
tests run is what production runs. When each built it its own way, the fetcher got no engine in
production (the entry point passed ``engines=``, the fetcher read ``engine=``) while every test,
which passed ``engine=``, went green; one path leaves no such gap to hide in.

- :func:`build_bot` turns a :class:`~bot.operator.config.BotConfig` (plus the registry and engines it
  runs on) into an :class:`~bot.app.AtelierBot`: every setting reaches its part here.
- :func:`assembled` opens what the bot runs on as well (the SQLite registry, the image check,
  the engines: those already running, or one started as a child process), builds the bot with
  :func:`build_bot`, and closes all of it in reverse order.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from bot.app import AtelierBot
from bot.engine_link import token as engine_token
from bot.engine_link.process import EngineProcess, EngineStartError
from bot.jobs import EngineLink
from bot.operator.access import AccessPolicy
from bot.operator.config import BotConfig
from bot.operator.guild_lifecycle import DAY_S
from bot.operator.safety import ImageSafety, load_classifier
from bot.registry import Registry
from bot.sources.civitai import CivitaiClient
from bot.sources.fetcher import FetchSettings
from engine.client import EngineClient
from engine.protocol import EngineError

log = logging.getLogger(__name__)


class StartError(RuntimeError):
    """The bot cannot start with these settings; the message says what to do.

    ``code`` is the exit status ``python -m bot`` ends with: 2 for a setting to fix, 1 for
    an engine that would not start."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def load_safety(config: BotConfig) -> ImageSafety:
    """The image check ``image_classifier`` asks for (raises StartError if it cannot be had)."""
    try:
        return ImageSafety(load_classifier(config.image_classifier))
    except RuntimeError as exc:
        raise StartError(str(exc)) from None


def fetch_settings(config: BotConfig) -> FetchSettings:
    """The operator's Civitai rules, from the ``civitai_*`` settings."""
    return FetchSettings(
        enabled=config.civitai_fetch,
        guilds=frozenset(config.civitai_fetch_guilds),
        max_file_bytes=config.civitai_max_file_size,
        quota_bytes=config.civitai_guild_quota,
        timeout_s=config.civitai_download_timeout,
        stall_s=config.civitai_stall_timeout,
        folder=config.civitai_folder,
        token=config.civitai_token,
    )


def build_bot(
    config: BotConfig,
    *,
    registry: Any,
    engines: Sequence[EngineLink | EngineClient],
    safety: ImageSafety | None = None,
    force_sync: bool = False,
    **options: Any,
) -> AtelierBot:
    """The bot ``config`` describes, on an open ``registry`` and its ``engines``.

    ``safety`` defaults to the check ``config.image_classifier`` names. ``options`` are
    AtelierBot arguments no setting gives, for the demo and tests only (``guild_ready_timeout``
    to be ready at once against the Discord double, ``fetch_poll_interval``,
    ``purge_interval_s``); a setting is changed in ``config``, never here.
    """
    return AtelierBot(
        registry=registry,
        engines=engines,
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
        access=AccessPolicy.from_config(allowed_guilds=config.allowed_guilds, shares=config.shares, owners=config.owners),
        safety=safety if safety is not None else load_safety(config),
        data_grace_s=config.data_grace_days * DAY_S,
        leave_other_guilds=config.leave_other_guilds,
        civitai=CivitaiClient(config.civitai_url, token=config.civitai_token),
        fetch=fetch_settings(config),
        **options,
    )


async def start_engines(config: BotConfig) -> list[EngineLink]:
    """The engines ``config`` names (their token checked now, not at the first /imagine), or
    one started as a child process. The caller closes their clients and stops the process."""
    if config.external_engines:
        if not config.engine_token:
            raise StartError(
                "ATELIER_ENGINE_URL(S) is set but ATELIER_ENGINE_TOKEN is not. The engine answers "
                "only requests that carry its token: set ATELIER_ENGINE_TOKEN to the value the engine "
                "was started with."
            )
        cluster = config.engine_backend == "ray"
        links = [
            EngineLink(EngineClient(url, token=config.engine_token, inline_images=cluster), cluster=cluster)
            for url in config.external_engines
        ]
        for link in links:
            try:
                health = await link.client.health()
                if cluster and health.get("backend") != "ray":
                    log.warning("engine_backend is 'ray' but %s does not answer as a Ray Serve cluster "
                                "(is it the address of `serve deploy deploy/serve.yaml`?)", link.client)
            except EngineError as exc:
                if exc.code == "unauthorized":
                    for other in links:
                        await other.client.close()
                    raise StartError(exc.message) from None
                log.warning("the engine %s does not answer yet: %s", link.client, exc.message)
        return links
    token = config.engine_token or engine_token.load_or_create(config.engine_token_path)
    # Downloads are the engine's to make (it owns the LoRA folder): on only when the operator
    # turned fetching on, and only from the configured hosts.
    downloads = (
        ["--allow-downloads", "--download-hosts", ",".join(config.civitai_download_hosts)]
        if config.civitai_fetch
        else []
    )
    process = EngineProcess(
        token=token,
        model_dir=config.model_dir,
        lora_dir=config.lora_dir,
        port=config.engine_port,
        python=config.engine_python,
        start_timeout=config.engine_start_timeout,
        extra_args=downloads,
    )
    log.info("starting the engine: %s", " ".join(process.command()))
    try:
        await process.start()
    except EngineStartError as exc:
        raise StartError(str(exc), code=1) from None
    return [EngineLink(EngineClient(process.url, token=token), process)]


@contextlib.asynccontextmanager
async def assembled(
    config: BotConfig,
    *,
    registry: Registry | None = None,
    engines: Sequence[EngineLink] | None = None,
    force_sync: bool = False,
    **options: Any,
) -> AsyncIterator[AtelierBot]:
    """The bot and everything it runs on, opened in order and closed in reverse.

    The image check is loaded first, so a wrong setting stops the start before an engine
    does. ``registry`` and ``engines``, when given, are the caller's to close (a test that
    restarts the bot on one database); otherwise they come from ``config`` and are closed
    here. The bot is built, not started: the caller starts it against Discord (or the double).
    """
    safety = options.pop("safety", None) or load_safety(config)
    async with contextlib.AsyncExitStack() as stack:
        if registry is None:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            registry = await Registry.open(config.database_path)
            stack.push_async_callback(registry.close)
        if engines is None:
            links = await start_engines(config)
            for link in links:
                if link.process is not None:
                    stack.push_async_callback(link.process.stop)
                stack.push_async_callback(link.client.close)
            engines = links
        bot = build_bot(config, registry=registry, engines=engines, safety=safety, force_sync=force_sync, **options)

        async def close_bot() -> None:
            if not bot.is_closed():
                await bot.close()

        stack.push_async_callback(close_bot)
        yield bot
