"""The member's private status reply: what it says, and when it is edited.

The reply to ``/imagine`` (ephemeral, with a Cancel button) is the job's status message. It
is edited through the interaction token, whose rate-limit bucket belongs to that one reply,
so a queue of hundreds in one busy channel costs the channel nothing but its results.

Edits are coalesced: a reply is edited at most once per ``interval``, with the newest text,
and only when the text changed. Queue positions far back and ETAs are shown rounded, so a job
500th in line is not edited every time one job ahead of it finishes; a bounded number of
edits is in flight at once, final states first. Discord accepts token edits for 15 minutes:
shortly before that, a queued job's reply says so once and where the image will appear.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.jobs.model import Job, JobState
from bot.jobs.poster import Poster
from bot.ui import embeds

log = logging.getLogger(__name__)

#: Positions up to this are shown exactly; beyond, on a 1-2-5 scale (and so edited rarely:
#: a job 500th in line changes its text about a dozen times before it is next).
EXACT_POSITIONS = 5
#: ETAs are shown on a similar scale, in minutes.
ETA_MINUTES = (1, 2, 3, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 360, 480, 720)
#: How long before the token expires a still-waiting job gets its last update.
FAREWELL_S = 60.0


def _nearest(value: float, scale: tuple[int, ...]) -> int:
    """The step of ``scale`` closest to ``value`` by ratio (so 7 -> 5 and 8 -> 10)."""
    return min(scale, key=lambda step: abs(math.log(value / step)))


_POSITION_SCALE = tuple(m * 10**e for e in range(1, 5) for m in (1, 2, 5))


def describe_position(ahead: int) -> str:
    if ahead <= 0:
        return "you are next"
    if ahead <= EXACT_POSITIONS:
        return f"**{ahead}** ahead of you"
    return f"about **{_nearest(ahead, _POSITION_SCALE)}** ahead of you"


def describe_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return "starts in under a minute"
    minutes = _nearest(seconds / 60, ETA_MINUTES)
    if minutes >= 120:
        return f"starts in about {minutes // 60} h"
    return f"starts in about {minutes} min"


def describe_duration(seconds: float) -> str:
    """A setting's length as members read it: minutes from two minutes on, else seconds."""
    if seconds >= 120:
        return f"{seconds / 60:g} minutes"
    return f"{seconds:g} s"


def progress_bar(step: int, total: int) -> str:
    percent = int(100 * step / total) if total else 0
    return "█" * (percent // 10) + "░" * (10 - percent // 10) + f"` {step}/{total} ({percent}%)"


def status_text(job: Job, *, engines_down: bool = False) -> str:
    """The reply's text for the job's current state (private: the member's own words stay)."""
    prompt = embeds.truncate(job.recipe.prompt.replace("\n", " "), 80)
    tail = f" · *{prompt}*"
    if job.state == JobState.QUEUED:
        if job.waiting_for == "retrying":
            return ("⚠️ The image engine stopped while making this image; it runs again as soon as "
                    "an engine is back." + tail)
        if engines_down:
            return "⏳ Queued. The image engine is restarting; your request is kept and runs when it is back." + tail
        where = describe_position(job.position)
        eta = describe_eta(job.eta_s)
        return f"⏳ Queued: {where}{', ' + eta if eta else ''}. The image will be posted in this channel." + tail
    if job.state == JobState.SUBMITTED:
        return "⏳ Next up: the engine is getting your model and LoRAs ready." + tail
    if job.state == JobState.RUNNING:
        if job.total:
            return "🎨 Generating `" + progress_bar(job.step, job.total) + tail
        return "🎨 Loading the model and LoRAs…" + tail
    if job.state == JobState.POSTING:
        return "📤 Posting the image in this channel…" + tail
    if job.state == JobState.DONE:
        if job.result_message_ids:
            link = f"https://discord.com/channels/{job.guild_id}/{job.channel_id}/{job.result_message_ids[0]}"
            return f"✅ Done: {link}"
        return "✅ Done."
    if job.state == JobState.CANCELLED:
        return "🚫 Cancelled." + tail
    return f"⚠️ {job.error or 'The image could not be made.'}"


def stop_text(job: Job) -> str:
    """What a job's reply says while the bot is stopped (:meth:`Dispatcher.close`); only for
    jobs that have not ended: an ended one keeps its outcome."""
    prompt = embeds.truncate(job.recipe.prompt.replace("\n", " "), 80)
    if job.state == JobState.POSTING:
        # Made, and possibly already in the channel: nothing runs again and nothing can be cancelled.
        return ("⏸️ The bot is restarting. Your image is made; it is posted in this channel when "
                f"the bot is back. · *{prompt}*")
    return f"⏸️ The bot is restarting. Your request is kept and runs when it is back. · *{prompt}*"


def farewell_text(job: Job) -> str:
    where = describe_position(job.position)
    return (
        f"⏳ Still queued ({where}). Discord lets me update this message for 15 minutes only, so "
        "I'll mention you in this channel when the image is posted. `/queue` shows where it is."
    )


@dataclass
class _Entry:
    last_text: str = ""
    last_sent: float = 0.0
    dirty: bool = False
    final: bool = False
    sending: bool = False
    dead: bool = False
    result: str = ""
    task: asyncio.Task[str] | None = None


class StatusBoard:
    """Coalesced, bounded edits of every job's private status reply."""

    def __init__(
        self,
        poster: Poster,
        render: Callable[[Job], str],
        *,
        interval: float = 2.0,
        max_in_flight: int = 8,
    ) -> None:
        self.poster = poster
        self.render = render
        self.interval = interval
        self._entries: dict[str, _Entry] = {}
        self._routine = asyncio.Semaphore(max_in_flight)
        self._urgent = asyncio.Semaphore(max_in_flight * 2)
        self.edits = 0
        self._closed = False

    def sent(self, job: Job, text: str) -> None:
        """The reply was just sent with ``text`` (the first answer): no edit needed for it."""
        entry = self._entries.setdefault(job.id, _Entry())
        entry.last_text, entry.last_sent = text, time.monotonic()

    def mark(self, job: Job) -> None:
        """The job changed: its reply will show it (soon, coalesced with later changes)."""
        if self._closed or job.status_message_id is None or not job.token_usable():
            return
        entry = self._entries.setdefault(job.id, _Entry())
        if entry.dead:
            return
        if entry.task is not None and not entry.task.done():
            entry.dirty = True  # the edit on its way (or waiting) will carry the newest text
            return
        if self.render(job) == entry.last_text:
            return  # nothing new to show: no task, no request
        entry.dirty = True
        entry.task = asyncio.create_task(self._flush(job, entry), name=f"status-{job.id}")

    async def final(self, job: Job, text: str | None = None, *, keep_view: bool | None = None) -> str:
        """Show the job's final state now; ``ok``, or why not (``token``: the reply is gone).

        ``keep_view`` (default: only while the job has not ended) keeps the Cancel button."""
        if job.status_message_id is None or not job.token_usable():
            self._entries.pop(job.id, None)
            return "token"
        entry = self._entries.setdefault(job.id, _Entry())
        entry.final, entry.dirty = True, True
        if entry.task is not None and not entry.task.done():
            if not entry.sending:
                entry.task.cancel()
            # asyncio.wait, not ``await task`` under suppress(CancelledError): that would also
            # swallow the cancellation of the job's own task, which then never stops.
            await asyncio.wait([entry.task])
        if entry.dirty and not entry.dead:
            await self._flush(job, entry, text=text, keep_view=keep_view)
        self._entries.pop(job.id, None)
        return entry.result or "token"

    async def farewell(self, job: Job) -> None:
        """The last edit a waiting job gets before its token expires."""
        entry = self._entries.setdefault(job.id, _Entry())
        if entry.dead:
            return
        entry.final, entry.dirty = True, True
        await self._flush(job, entry, text=farewell_text(job), keep_view=True)
        entry.dead = True

    async def close(self) -> None:
        self._closed = True
        tasks = [e.task for e in self._entries.values() if e.task is not None and not e.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._entries.clear()

    def forget(self, job: Job) -> None:
        entry = self._entries.pop(job.id, None)
        if entry is not None and entry.task is not None and not entry.task.done():
            entry.task.cancel()

    async def _flush(self, job: Job, entry: _Entry, *, text: str | None = None, keep_view: bool | None = None) -> str:
        while entry.dirty and not entry.dead:
            if not entry.final:
                wait = entry.last_sent + self.interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            entry.dirty = False
            body = text if text is not None else self.render(job)
            if body == entry.last_text:
                entry.result = entry.result or "ok"
                continue
            gate = self._urgent if entry.final or job.state != JobState.QUEUED else self._routine
            keep = (not job.state.final) if keep_view is None else keep_view
            async with gate:
                entry.sending = True
                try:
                    entry.result = await self.poster.edit_status(job, body, keep_view=keep)
                finally:
                    entry.sending = False
            self.edits += 1
            if entry.result == "ok":
                entry.last_text, entry.last_sent = body, time.monotonic()
            elif entry.result in ("token", "gone"):
                entry.dead = True
        return entry.result
