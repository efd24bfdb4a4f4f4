"""Fetching a LoRA from Civitai for one server: look it up, plan it, have the engine download it,
register it. Discord-free (progress goes to a callback), so tests and the demo drive it directly.

Who does what, and why: the bot talks to Civitai's API (it decides, with the server's registry
at hand, whether the file may come in: :mod:`bot.sources.plan`); the engine downloads the bytes
into its LoRA folder (it owns that folder, and may run on another machine whose disk the bot
never sees: :mod:`engine.downloads`). The bot then registers what the engine verified, with
the facts the file itself gives (architecture, hashes, format) and Civitai's for the rest
(trigger words, description, preview, base model family, AIR).

A download runs as its own asyncio task, never in the job queue: nothing waits on it but the
admin who asked. Two requests for the same file (two admins, two servers sharing a folder, a
member and an admin) share one download; each server then registers it for itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from bot.operator.access import AccessPolicy
from bot.registry.models import Category, EmbeddingEntry, LoraEntry, RegistryError
from bot.sources.civitai import CivitaiClient, CivitaiError, CivitaiVersion
from bot.sources.plan import FetchPlan, FetchRefused, Limits, plan_fetch, size_text
from bot.sources.refs import (
    ARCHITECTURE_ECOSYSTEMS,
    Air,
    SourceError,
    SourceRef,
    parse_air,
    parse_source,
)
from engine.client import EngineClient
from engine.protocol import DownloadRequest, DownloadStatus, EngineError, FileInfo

log = logging.getLogger(__name__)

#: What a progress callback is told: the stage, the plan (once there is one), bytes so far and expected.
Stage = Literal["looking_up", "downloading", "verifying", "registering"]
Progress = Callable[[Stage, FetchPlan | None, int, int], Awaitable[None]]
#: Civitai tags -> registry categories (the first tag that maps wins).
_TAG_CATEGORIES = {
    "character": Category.CHARACTER, "style": Category.STYLE, "concept": Category.CONCEPT,
    "clothing": Category.OUTFIT, "poses": Category.POSE, "tool": Category.DETAIL,
}  # fmt: skip


@dataclass(frozen=True)
class FetchSettings:
    """The operator's controls (``civitai_*`` configuration)."""

    enabled: bool = False
    #: Servers that may fetch; empty: every server the bot serves.
    guilds: frozenset[int] = frozenset()
    max_file_bytes: int = 2 * 1024**3
    quota_bytes: int = 20 * 1024**3
    timeout_s: float = 1800.0
    stall_s: float = 60.0
    folder: str = "civitai"
    #: Sent to the engine for downloads that need a login; never logged or shown.
    token: str = field(default="", repr=False)


class AlreadyRegistered(Exception):
    def __init__(self, entry: LoraEntry | EmbeddingEntry) -> None:
        super().__init__(entry.name)
        self.entry = entry


@dataclass(frozen=True)
class Fetched:
    entry: LoraEntry | EmbeddingEntry
    plan: FetchPlan
    #: The file was on the engine's disk already (nothing downloaded).
    reused: bool
    notes: tuple[str, ...] = ()


async def _quiet(_stage: Stage, _plan: FetchPlan | None, _received: int, _total: int) -> None:
    return None


class Fetcher:
    def __init__(
        self,
        *,
        registry: Any,
        engine: Callable[[], EngineClient],
        civitai: CivitaiClient,
        access: Callable[[], AccessPolicy],
        settings: FetchSettings,
        poll_interval: float = 0.5,
    ) -> None:
        self.registry = registry
        #: The engine to ask, chosen at each use (the pool's healthy one): one download then
        #: stays on the engine it started on.
        self.engine = engine
        self.civitai = civitai
        self._access = access
        self.settings = settings
        self.poll_interval = poll_interval
        #: Downloads under way, by destination: later callers wait on the same one, and every
        #: caller's progress callback hears of it.
        self._inflight: dict[str, asyncio.Future[tuple[FileInfo, bool]]] = {}
        self._listeners: dict[str, list[Progress]] = {}
        #: Bytes of downloads under way per server, counted against its quota.
        self._reserved: dict[int, dict[str, int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- the operator's rules --------------------------------------------------------------

    def refusal(self, guild_id: int) -> str | None:
        """Why this server may not fetch at all (operator's settings), or None."""
        if not self.settings.enabled:
            return (
                "Fetching from Civitai is off on this bot. Its operator can turn it on "
                "(ATELIER_CIVITAI_FETCH=true); meanwhile, put the file in the LoRA folder and pick it in `file`."
            )
        if self.settings.guilds and guild_id not in self.settings.guilds:
            return "This bot's operator has not allowed this server to fetch from Civitai (civitai_fetch_guilds)."
        if self.folder(guild_id) is None:
            return "This server's share of the LoRA folder has no folder the bot could download into; its operator can add one."
        return None

    def folder(self, guild_id: int) -> str | None:
        return self._access().download_folder(guild_id, self.settings.folder)

    async def used_bytes(self, guild_id: int) -> int:
        """What this server's downloads fill: files in its download folder, plus those under way."""
        folder = self.folder(guild_id) or ""
        prefix = f"{folder}/" if folder else ""
        files = await self.engine().list_files("lora")
        on_disk = sum(f.size_bytes for f in files if f.path.startswith(prefix))
        return on_disk + sum(self._reserved.get(guild_id, {}).values())

    # --- look-ups --------------------------------------------------------------------------

    async def lookup(self, ref: SourceRef) -> CivitaiVersion:
        """The version a reference names (raises CivitaiError)."""
        if ref.kind == "hash" and ref.hash:
            return await self.civitai.version_by_hash(ref.hash)
        if ref.kind == "model" and ref.model_id is not None:
            return await self.civitai.latest_version(ref.model_id)
        assert ref.version_id is not None
        return await self.civitai.version(ref.version_id)

    # --- fetching --------------------------------------------------------------------------

    async def fetch(
        self,
        guild_id: int,
        actor_id: int,
        source: str | SourceRef,
        *,
        name: str | None = None,
        progress: Progress = _quiet,
        overrides: dict[str, Any] | None = None,
    ) -> Fetched:
        """Look up, check, download and register ``source`` for this server.

        ``overrides`` are registry fields the admin gave (category, trigger words, weight...):
        they win over what Civitai says.

        Raises FetchRefused (every reason, nothing downloaded or registered) or
        AlreadyRegistered (this server has that version or that file already).
        """
        refusal = self.refusal(guild_id)
        if refusal:
            raise FetchRefused([refusal])
        try:
            ref = source if isinstance(source, SourceRef) else parse_source(source)
        except SourceError as exc:
            raise FetchRefused([str(exc)]) from None
        await progress("looking_up", None, 0, 0)
        try:
            version = await self.lookup(ref)
        except CivitaiError as exc:
            raise FetchRefused([f"{exc.message}."]) from None
        catalog = await self.registry.catalogs.get(guild_id)
        existing = await self._registered(guild_id, catalog, version)
        if existing is not None:
            raise AlreadyRegistered(existing)
        folder = self.folder(guild_id)
        assert folder is not None
        try:
            used = await self.used_bytes(guild_id)
        except EngineError as exc:
            raise FetchRefused([f"The engine could not list its LoRA folder: {exc.message}"]) from None
        kind_names = catalog.embeddings if version.model_type.lower() == "textualinversion" else catalog.loras
        plan = plan_fetch(
            version,
            ref=ref,
            models=list(catalog.models.values()),
            settings=catalog.settings,
            folder=folder,
            limits=Limits(self.settings.max_file_bytes, self.settings.quota_bytes, used),
            taken_names=kind_names.keys(),
            name=name,
            runnable=await self._runnable(),
        )
        await progress("downloading", plan, 0, plan.file.size_bytes)
        reserved = self._reserved.setdefault(guild_id, {})
        reserved[plan.path] = plan.file.size_bytes
        try:
            info, reused = await self._download(plan, progress)
        finally:
            reserved.pop(plan.path, None)
            if not reserved:  # no download of this server under way: no entry kept for it
                self._reserved.pop(guild_id, None)
        # Someone else in this server may have registered it while it downloaded.
        existing = await self._registered(guild_id, await self.registry.catalogs.get(guild_id), version)
        if existing is not None:
            raise AlreadyRegistered(existing)
        await progress("registering", plan, plan.file.size_bytes, plan.file.size_bytes)
        entry, notes = await self._register(guild_id, actor_id, plan, info, overrides or {})
        return Fetched(entry, plan, reused, plan.notes + notes)

    async def _runnable(self) -> tuple[str, ...] | None:
        """The architectures the engine says it runs (its /health), so a version made for one
        it cannot run is refused before any download; None when the engine does not say."""
        try:
            found = (await self.engine().health()).get("architectures")
        except EngineError:
            return None
        return tuple(str(a) for a in found) if isinstance(found, list) and found else None

    async def _registered(self, guild_id: int, catalog: Any, version: CivitaiVersion) -> LoraEntry | EmbeddingEntry | None:
        """This server's entry for that version (by AIR) or for one of its files (by sha256)."""
        by_air = catalog.loras_by_air(f"civitai:{version.model_id}@{version.id}")
        if by_air:
            return by_air[0]
        for file in version.files:
            if len(file.sha256) != 64:
                continue
            for embedding in catalog.embeddings.values():
                if embedding.sha256 == file.sha256:
                    return embedding
            name = await self.registry.book.find_by_hash(guild_id, "loras", file.sha256)
            if name is not None:
                lora = await self.registry.loras.get(guild_id, name)
                if lora is not None and lora.sha256 == file.sha256:
                    return lora
        return None

    async def _download(self, plan: FetchPlan, progress: Progress) -> tuple[FileInfo, bool]:
        """The engine's verified file at ``plan.path``: one download however many ask."""
        listeners = self._listeners.setdefault(plan.path, [])
        listeners.append(progress)
        running = self._inflight.get(plan.path)
        if running is None:
            running = asyncio.get_running_loop().create_future()
            self._inflight[plan.path] = running
            task = asyncio.create_task(self._run_download(plan, running), name=f"fetch-{plan.version.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            # Shielded: one waiter giving up (an interaction that expired) must not cancel the
            # download the others wait on.
            return await asyncio.shield(running)
        finally:
            with contextlib.suppress(ValueError):
                listeners.remove(progress)

    async def _tell(self, path: str, stage: Stage, plan: FetchPlan, received: int, total: int) -> None:
        for listener in list(self._listeners.get(path, ())):
            try:
                await listener(stage, plan, received, total)
            except Exception:  # a progress message that cannot be edited must not stop the download
                log.warning("a fetch progress callback failed", exc_info=True)

    async def _run_download(self, plan: FetchPlan, result: asyncio.Future[tuple[FileInfo, bool]]) -> None:
        try:
            outcome = await self._engine_download(plan)
        except BaseException as exc:
            if not result.done():
                result.set_exception(exc if isinstance(exc, Exception) else FetchRefused(["The download was stopped."]))
            if not isinstance(exc, Exception):
                raise
        else:
            if not result.done():
                result.set_result(outcome)
        finally:
            self._inflight.pop(plan.path, None)
            self._listeners.pop(plan.path, None)
            if result.done() and not result.cancelled():
                result.exception()  # retrieved: a failure nobody awaited is not logged as lost

    async def _engine_download(self, plan: FetchPlan) -> tuple[FileInfo, bool]:
        file = plan.file
        request = DownloadRequest(
            id=f"civitai-{plan.version.id}-{file.id}-{file.sha256[:12]}",
            url=file.download_url or plan.version.download_url,
            path=plan.path,
            sha256=file.sha256,
            kind=plan.kind,
            size_bytes=file.size_bytes,
            max_bytes=self.settings.max_file_bytes,
            timeout_s=self.settings.timeout_s,
            stall_s=self.settings.stall_s,
            auth_token=self.settings.token,
        )
        engine = self.engine()
        try:
            status = await engine.start_download(request)
            while status.state not in ("done", "failed"):
                stage: Stage = "verifying" if status.state == "verifying" else "downloading"
                await self._tell(plan.path, stage, plan, status.received, status.total or file.size_bytes)
                await asyncio.sleep(self.poll_interval)
                status = await engine.download_status(status.id)
        except EngineError as exc:
            raise FetchRefused([f"The engine could not download it: {exc.message}"]) from None
        if status.state == "failed" or status.file is None:
            raise FetchRefused([_failure_text(status)])
        return status.file, status.reused

    async def _register(
        self, guild_id: int, actor_id: int, plan: FetchPlan, info: FileInfo, overrides: dict[str, Any]
    ) -> tuple[LoraEntry | EmbeddingEntry, tuple[str, ...]]:
        version = plan.version
        notes: list[str] = []
        if info.cannot_run:
            # Civitai's label passed the plan, but the file itself is for something the engine
            # cannot run (a FLUX LoRA listed as SDXL): its header wins, as everywhere else.
            raise FetchRefused([
                f"It was downloaded and verified, but {info.cannot_run} It was not registered; "
                f"the operator can delete `{plan.path}` from the LoRA folder."
            ])  # fmt: skip
        if plan.architecture not in ("unknown", info.architecture) and info.architecture != "unknown":
            notes.append(
                f"Civitai says {version.base_model}, but the file reads as {info.architecture}; it is registered as the file says."
            )
        architecture = info.architecture if info.architecture != "unknown" else plan.architecture
        family = info.family if info.family != "unknown" else plan.family
        description, tags = await self.civitai.model_details(version.model_id)
        description = version.description or description
        source = str(_air_of(version, plan).canonical(type="embedding" if plan.kind == "embedding" else "lora", architecture=architecture))
        try:
            if plan.kind == "embedding":
                given = {k: v for k, v in overrides.items() if k in ("description", "family")}
                embedding = EmbeddingEntry.from_file_info(
                    info, name=plan.name, **{"architecture": architecture, "family": family, "description": description,
                    "nsfw": plan.nsfw or bool(overrides.get("nsfw")), "source": source, **given},
                )  # fmt: skip
                return await self.registry.embeddings.add(guild_id, embedding, actor_id), tuple(notes)
            category = next((_TAG_CATEGORIES[t] for t in tags if t in _TAG_CATEGORIES), Category.OTHER)
            words = version.trained_words[:25] or tuple(info.trigger_words[:10])
            values: dict[str, Any] = {
                "category": category, "architecture": architecture, "family": family,
                "trigger_words": tuple(dict.fromkeys(w for w in words if len(w) <= 200)),
                "description": description, "nsfw": plan.nsfw, "source": source, "preview_url": version.preview(),
            }  # fmt: skip
            # Civitai's baseModel names the weights it was trained against ("Flux.1 S"), which
            # the file's keys cannot tell (a schnell LoRA looks like a dev one).
            values["base_model"] = version.base_model or None
            if plan.variant is not None and plan.architecture == architecture:
                values["variant"] = plan.variant
            values.update(overrides)
            values["nsfw"] = bool(values["nsfw"]) or plan.nsfw  # Civitai's NSFW rating is never dropped here
            lora = LoraEntry.from_file_info(info, name=plan.name, **values)
            return await self.registry.loras.add(guild_id, lora, actor_id), tuple(notes)
        except RegistryError as exc:
            raise FetchRefused([
                f"It was downloaded and verified (`{plan.path}`), but could not be registered: {exc} "
                f"Register it with `/lora add file:{plan.path}`."
            ]) from None  # fmt: skip

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.civitai.close()


def _air_of(version: CivitaiVersion, plan: FetchPlan) -> Air:
    with contextlib.suppress(SourceError):
        if version.air:
            return parse_air(version.air)
    ecosystem = ARCHITECTURE_ECOSYSTEMS.get(plan.architecture, "other")
    return Air(ecosystem, None, "civitai", str(version.model_id), str(version.id))


def _failure_text(status: DownloadStatus) -> str:
    message = (status.error or {}).get("message") or "the download failed"
    return f"{message[0].upper()}{message[1:].rstrip('.')}. Nothing was kept or registered."


def describe_plan(plan: FetchPlan) -> str:
    """``**Name** · SDXL · Pony · 144.0 MB``: what is being fetched, for progress messages."""
    from engine.families import family_label
    from engine.protocol import architecture_label

    parts = [f"**{plan.name}**", architecture_label(plan.architecture)]
    if plan.family not in ("unknown", plan.architecture):
        parts.append(family_label(plan.family))
    parts.append(size_text(plan.file.size_bytes))
    return " · ".join(parts)

