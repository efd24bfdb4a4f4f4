"""One image request as the bot keeps it: the row in the job table, and its explicit states.

A job's life (InvokeAI's session queue has the same shape)::

    queued --> submitted --> running --> posting --> done
       |           |            |           |
       +-----------+------------+-----------+--> failed | cancelled

``submitted`` means the bot handed it to an engine (and wrote so first); ``running`` that the
engine reported its start; ``posting`` that the images are being uploaded. A job the engine
lost (crash, stall) goes back to ``queued`` once. ``told`` records that the member learned the
final outcome, so a restart between "failed" and "told" still tells them.
"""

from __future__ import annotations

import enum
import time
import uuid
from dataclasses import dataclass, field

from engine.protocol import Recipe

#: Discord's default upload limit when no interaction told us better (since 2025).
DEFAULT_FILE_LIMIT = 10 * 1024 * 1024
#: Interaction tokens live 15 minutes; edits are stopped a little before, to never race it.
TOKEN_LIFETIME_S = 15 * 60
TOKEN_MARGIN_S = 20


class JobState(enum.StrEnum):
    QUEUED = "queued"
    SUBMITTED = "submitted"
    RUNNING = "running"
    POSTING = "posting"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)

    @property
    def on_engine(self) -> bool:
        return self in (JobState.SUBMITTED, JobState.RUNNING)


@dataclass(eq=False)
class Job:
    """A request and everything needed to finish it after a restart.

    ``created_at`` and the other timestamps are wall-clock seconds (they outlive the process).
    The fields under "live" are not stored: progress is shown, not kept. Jobs compare by
    identity (``eq=False``): one object per job, and queues search them often.
    """

    recipe: Recipe
    guild_id: int
    channel_id: int
    user_id: int
    user_name: str
    origin: str = "imagine"
    notes: tuple[str, ...] = ()
    file_limit: int = DEFAULT_FILE_LIMIT
    #: Share of the server's turns relative to other members: 2 for an admin-named priority role.
    weight: int = 1
    #: The message this job was rerolled/remixed/made from, and how the result credits it
    #: ((label, link) for the embed); recorded by ``on_result`` (see bot.ui.recipe_actions).
    parent_message_id: int | None = None
    parent_channel_id: int | None = None
    parent_credit: tuple[str, str] | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: JobState = JobState.QUEUED
    attempts: int = 0
    losses: int = 0
    engine: str | None = None
    cancel_requested: bool = False
    application_id: int | None = None
    interaction_token: str | None = None
    token_expires_at: float | None = None
    status_message_id: int | None = None
    result_message_ids: tuple[int, ...] = ()
    error: str | None = None
    seconds: float | None = None
    told: bool = False
    created_at: float = field(default_factory=time.time)
    submitted_at: float | None = None
    started_at: float | None = None
    posting_at: float | None = None
    finished_at: float | None = None
    updated_at: float = field(default_factory=time.time)
    # -- live ------------------------------------------------------------------------------
    step: int = 0
    total: int = 0
    #: Jobs ahead of it (queued or on an engine), and the estimated seconds until it starts.
    position: int = 0
    eta_s: float | None = None
    #: Why the job waits, when it is not simply its turn ("engine_down", "retrying").
    waiting_for: str | None = None
    #: Passed over by affinity this many times (bounded; see the scheduler).
    skips: int = 0
    #: After an engine loss, the job fails unless an engine takes it before this (monotonic).
    retry_deadline: float | None = None
    #: Taken back from an engine's queue before it started, to let another server's first
    #: job go next; it returns to the front of its member's line, its turn already paid for.
    withdrawn: bool = False
    prepaid: bool = False
    #: The private reply could not be sent (or a restart came first): tell in the channel.
    reply_lost: bool = False

    @property
    def engine_job_id(self) -> str:
        """The id the engine knows this run by; idempotent, so a resubmit never runs it twice."""
        return f"{self.id}.{self.attempts}"

    def token_usable(self, now: float | None = None) -> bool:
        """True while Discord still accepts edits through the interaction token."""
        if not self.interaction_token or self.application_id is None or self.token_expires_at is None:
            return False
        return (time.time() if now is None else now) < self.token_expires_at

    def forget_token(self) -> None:
        """Drop the interaction token: it is a credential, kept no longer than it is useful."""
        self.interaction_token = None
        self.token_expires_at = None


def token_expiry(interaction_created_at: float) -> float:
    """When edits through an interaction created at ``interaction_created_at`` must stop."""
    return interaction_created_at + TOKEN_LIFETIME_S - TOKEN_MARGIN_S
