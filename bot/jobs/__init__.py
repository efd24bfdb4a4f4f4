"""The job path: from an accepted request to a posted image, durable and fair.

One concept per module, in the order a job meets them:

- :mod:`bot.jobs.model` — a job and its explicit states (queued, submitted, running,
  posting, done, failed, cancelled).
- :mod:`bot.jobs.store` — the job table in SQLite: the source of truth a restart resumes from.
- :mod:`bot.jobs.scheduler` — fair turns across servers, then members; affinity; batching.
- :mod:`bot.jobs.engines` — the engines (one per GPU or machine), their depth and health.
- :mod:`bot.jobs.speed` — measured speeds, for ETAs and fair turns.
- :mod:`bot.jobs.poster` — results, notices and status edits on Discord, with retries.
- :mod:`bot.jobs.status` — the member's private status reply, coalesced.
- :mod:`bot.jobs.images` — fitting PNGs into Discord's upload limits.
- :mod:`bot.jobs.admission` — the member, server and bot caps a new job must pass.
- :mod:`bot.jobs.follow` — one job on its engine: progress, stalls, an engine that goes away.
- :mod:`bot.jobs.dispatcher` — ties them together and survives crashes.
- :mod:`bot.jobs.recovery` — after a restart: takes up every unfinished job exactly once.
"""

from bot.jobs.admission import Limits, QueueFull
from bot.jobs.dispatcher import Dispatcher, describe_error
from bot.jobs.engines import EngineLink, EnginePool
from bot.jobs.follow import DEFAULT_STALL_LIMIT_S
from bot.jobs.images import fit_files
from bot.jobs.model import DEFAULT_FILE_LIMIT, Job, JobState, token_expiry
from bot.jobs.poster import Poster, PostRefused
from bot.jobs.scheduler import FairScheduler
from bot.jobs.store import JobStore

__all__ = [
    "DEFAULT_FILE_LIMIT",
    "DEFAULT_STALL_LIMIT_S",
    "Dispatcher",
    "EngineLink",
    "EnginePool",
    "FairScheduler",
    "Job",
    "JobState",
    "JobStore",
    "Limits",
    "PostRefused",
    "Poster",
    "QueueFull",
    "describe_error",
    "fit_files",
    "token_expiry",
]
