"""Everything the job path says on Discord, and how it survives Discord's bad moments.

- **Results** are channel messages (the interaction token dies after 15 minutes, a queue can
  be longer), sent with a nonce derived from the job and ``enforce_nonce``: Discord answers a
  repeat with the message it already made, so a bot killed between Discord's "created" and
  the job table's "done" does not post the image twice when it resumes.
- **Status** lives in the member's private reply to ``/imagine`` (see :mod:`bot.jobs.status`),
  edited through the interaction token, whose rate-limit bucket is the token's own: a busy
  channel's message bucket (5 per 5 s) is left to the results.
- **Transient errors** (500, 502, 503, 504, 520-524, a 429 discord.py could not absorb, a
  reset connection, a timeout) are retried with exponential backoff for a bounded time;
  discord.py itself retries only some of them (not 503, not resets on Linux). A permissions
  message is given only for Discord's real permission errors (403 with 50001 or 50013).
- **One place** checks images before they are posted: :func:`bot.operator.safety.screen_for_channel`,
  called by :meth:`Poster.post_result` (flagged images withheld or spoilered where the
  server's policy says so); mentions are limited to the requester.

Rate limits themselves are discord.py's business: it reads Discord's ``X-RateLimit-*``
headers and waits per bucket, so this module only keeps the number of requests it starts
bounded and coalesces what it can.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiohttp
import discord

from bot.jobs.images import fit_files
from bot.jobs.model import Job
from bot.operator.safety import screen_for_channel
from bot.ui import embeds

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Answers worth another try: Discord's edge and API during incidents.
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
#: Discord's codes for "the bot may not do this here".
PERMISSION_CODES = frozenset({50001, 50013})
#: The interaction token is no longer valid (expired, or Discord forgot the interaction).
TOKEN_CODES = frozenset({50027, 10015})
#: How long a finished image is retried before the member is told it could not be posted.
RESULT_RETRY_S = 15 * 60
#: How long a status edit or notice is retried: a later state replaces it anyway.
STATUS_RETRY_S = 60
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
NONCE_LENGTH = 25  # Discord's limit for a nonce string

ResultView = Callable[[Job], discord.ui.View | None]


class PostRefused(Exception):
    """Discord will not take this post (or nothing is left to post); ``text`` is for the member."""

    def __init__(self, text: str, *, kind: str = "refused") -> None:
        super().__init__(text)
        self.text = text
        self.kind = kind


def classify(exc: BaseException) -> str:
    """``transient``, ``permission``, ``token``, ``gone`` (channel or message deleted), or ``refused``."""
    if isinstance(exc, discord.HTTPException):
        code = getattr(exc, "code", 0)
        if exc.status in TRANSIENT_STATUS:
            return "transient"
        if exc.status == 403 and code in PERMISSION_CODES:
            return "permission"
        if code in TOKEN_CODES:
            return "token"
        if exc.status == 404:
            return "gone"
        return "refused"
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ClientError | ConnectionError | OSError):
        return "transient"
    return "refused"


async def with_retries(
    call: Callable[[], Awaitable[T]], *, within_s: float, what: str, closing: Callable[[], bool] = lambda: False
) -> T:
    """``call()`` until it succeeds, retrying transient failures for ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    delay = BACKOFF_FIRST_S
    while True:
        try:
            return await call()
        except Exception as exc:
            if classify(exc) != "transient" or closing():
                raise
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s failed (%s: %s); retrying in %.0f s", what, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay * (0.75 + random.random() / 2))
            delay = min(delay * 2, BACKOFF_MAX_S)


def nonce(kind: str, job: Job) -> str:
    """A message nonce that is the same for the same post of the same job, on every try."""
    return (kind + job.id)[:NONCE_LENGTH]


def refusal_text(exc: BaseException) -> str:
    """What a member reads when Discord would not take a post (no internal details)."""
    kind = classify(exc)
    if kind == "permission":
        return (
            "I can't post in this channel. Ask an admin to give me View Channel, Send Messages, "
            "Embed Links and Attach Files here, or use another channel."
        )
    if kind == "gone":
        return "the channel is gone (deleted, or I was removed from it), so the image could not be posted."
    if kind == "transient":
        return "Discord kept failing while I posted the image, for longer than I could wait."
    status = getattr(exc, "status", "?")
    return f"Discord refused the image ({status}: {getattr(exc, 'text', '') or 'no reason given'})."


class Poster:
    """Posts results and notices for the dispatcher; see the module docstring for the rules."""

    def __init__(
        self,
        client: discord.Client,
        *,
        result_view: ResultView = lambda job: None,
        result_retry_s: float = RESULT_RETRY_S,
        status_retry_s: float = STATUS_RETRY_S,
    ) -> None:
        self.client = client
        self.result_view = result_view
        self.result_retry_s = result_retry_s
        self.status_retry_s = status_retry_s
        self.closing = False

    def channel(self, job: Job) -> discord.PartialMessageable:
        return self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)

    # -- results -----------------------------------------------------------------------------

    async def post_result(self, job: Job, images: list[bytes], seconds: float | None) -> discord.Message:
        """The images with their recipe, once; raises :class:`PostRefused` if it cannot be done."""
        # Re-encoding oversize PNGs takes CPU seconds: in a thread, so the event loop keeps
        # acknowledging everyone else's interactions within Discord's 3 seconds meanwhile.
        fitted, notes = await asyncio.to_thread(fit_files, images, job.file_limit)
        if not fitted:
            raise PostRefused("; ".join(notes) or "the engine returned no image.", kind="too_large")
        # The image check (bot.operator.safety): flagged images withheld or spoilered where NSFW is not allowed.
        screened = await screen_for_channel(self.client, job.guild_id, job.channel_id, fitted)
        embed = embeds.recipe_embed(
            job.recipe, requester=job.user_name, seconds=seconds,
            notes=[*job.notes, *notes, *screened.notes], parent=job.parent_credit, reference=job.id[:8],
        )  # fmt: skip

        async def send() -> discord.Message:
            files = [
                discord.File(io.BytesIO(data), filename=f"atelier-{job.recipe.seed + i}.png", spoiler=spoiler)
                for i, data, spoiler in screened.files
            ]
            return await self.channel(job).send(
                content=f"<@{job.user_id}>",
                embed=embed,
                files=files,
                view=self.result_view(job),
                allowed_mentions=only(job.user_id),
                nonce=nonce("r", job),
            )

        try:
            return await with_retries(
                send, within_s=self.result_retry_s, what=f"posting the result of job {job.id}",
                closing=lambda: self.closing,
            )  # fmt: skip
        except discord.HTTPException as exc:
            log.error("posting the result of job %s failed: %s", job.id, exc)
            raise PostRefused(refusal_text(exc), kind=classify(exc)) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.error("posting the result of job %s failed: %s", job.id, exc)
            raise PostRefused(refusal_text(exc), kind="transient") from exc

    async def find_posted(self, job: Job) -> discord.Message | None:
        """A result of ``job`` already in the channel (a post whose answer was lost), if any.

        Discord's nonce check covers "a few minutes"; a bot that was down longer looks at the
        channel since the post began instead, for the job's reference in the embed footer.
        """
        if job.posting_at is None:
            return None
        marker = f"job {job.id[:8]}"
        after = discord.Object(discord.utils.time_snowflake(_utc(job.posting_at - 5)))
        try:
            async for message in self.channel(job).history(limit=100, after=after, oldest_first=True):
                if message.author.id != getattr(self.client.user, "id", None):
                    continue
                if any(marker in (e.footer.text or "") for e in message.embeds):
                    return message
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            log.info("could not read the channel of job %s to look for its post: %s", job.id, exc)
        return None

    # -- notices -----------------------------------------------------------------------------

    async def notify_channel(self, job: Job, text: str, *, kind: str = "n") -> bool:
        """A message in the job's channel for its member (when the private reply is gone)."""
        async def send() -> Any:
            return await self.channel(job).send(
                embeds.truncate(f"<@{job.user_id}> {text}", embeds.CONTENT_LIMIT),
                allowed_mentions=only(job.user_id),
                nonce=nonce(kind, job),
            )

        try:
            await with_retries(send, within_s=self.status_retry_s, what=f"telling the member of job {job.id}",
                               closing=lambda: self.closing)
            return True
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            log.warning("could not post a notice for job %s: %s", job.id, exc)
            return False

    async def notify_restart(self, channel_id: int, guild_id: int, jobs: Sequence[Job]) -> None:
        """One message per channel (not one per job) for members whose private reply expired."""
        counts: dict[int, int] = {}
        for job in jobs:
            counts[job.user_id] = counts.get(job.user_id, 0) + 1
        parts = [f"<@{user}>" + (f" ({n} requests)" if n > 1 else "") for user, n in counts.items()]
        head = "🔄 I restarted. These requests were kept and run in turn; the images will be posted here: "
        channel = self.client.get_partial_messageable(channel_id, guild_id=guild_id)
        chunk: list[str] = []
        chunks: list[list[str]] = []
        for part in parts:
            if len(head) + sum(len(p) + 2 for p in chunk) + len(part) > embeds.CONTENT_LIMIT - 10:
                chunks.append(chunk)
                chunk = []
            chunk.append(part)
        if chunk:
            chunks.append(chunk)
        for index, members in enumerate(chunks):
            text = head + ", ".join(members)
            mentioned = [int(p[2:p.index(">")]) for p in members]
            restart_nonce = f"s{jobs[0].id[:16]}{index:04d}"[:NONCE_LENGTH]
            try:
                await with_retries(
                    lambda text=text, mentioned=mentioned, restart_nonce=restart_nonce: channel.send(
                        text, allowed_mentions=only(*mentioned), nonce=restart_nonce
                    ),
                    within_s=self.status_retry_s, what=f"the restart notice in channel {channel_id}",
                )  # fmt: skip
            except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
                log.warning("could not post the restart notice in channel %s: %s", channel_id, exc)
                return

    # -- the private status reply ------------------------------------------------------------

    def _token_webhook(self, job: Job) -> discord.Webhook:
        # The followup webhook discord.py builds for an interaction (Interaction.followup),
        # rebuilt from the stored token so it also works after a restart.
        data: Any = {"id": job.application_id, "type": 3, "token": job.interaction_token}
        return discord.Webhook.from_state(data=data, state=self.client._connection)

    async def edit_status(self, job: Job, text: str, *, keep_view: bool) -> str:
        """Edit the member's private status reply: ``ok``, ``token`` (expired), ``gone``, ``failed``."""
        if not job.token_usable() or job.status_message_id is None:
            return "token"
        webhook = self._token_webhook(job)
        message_id = job.status_message_id

        async def edit() -> Any:
            kwargs: dict[str, Any] = {"content": embeds.truncate(text, embeds.CONTENT_LIMIT)}
            if not keep_view:
                kwargs["view"] = None
            return await webhook.edit_message(message_id, **kwargs)

        try:
            await with_retries(edit, within_s=self.status_retry_s, what=f"the status of job {job.id}",
                               closing=lambda: self.closing)
            return "ok"
        except discord.HTTPException as exc:
            kind = classify(exc)
            if kind == "token" or exc.status == 401:
                return "token"
            if kind == "gone":
                return "gone"
            log.warning("could not edit the status of job %s: %s", job.id, exc)
            return "failed"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("could not edit the status of job %s: %s", job.id, exc)
            return "failed"


def only(*user_ids: int) -> discord.AllowedMentions:
    """Mentions that ping exactly these members: a prompt or a name must never ping
    @everyone or a role, since both are echoed in the bot's messages."""
    return discord.AllowedMentions(
        everyone=False, roles=False, replied_user=False, users=[discord.Object(u) for u in user_ids]
    )


def _utc(timestamp: float) -> Any:
    import datetime

    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
