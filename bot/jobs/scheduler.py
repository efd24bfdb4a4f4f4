"""Which queued job runs next, and on which engine. Pure logic: no I/O, no clock of its own.

The order, from the most important rule to the least:

1. **Jobs an engine lost** (crash, stall) run first: they already had their turn.
2. **Servers take turns.** Start-time fair queueing over servers: each server has a virtual
   time that grows by the estimated GPU seconds of every job it gets; the server with the
   smallest one goes next. A server that becomes active starts just below the busiest
   active server's level, so its first job is next, and an idle server neither banks credit
   nor loses its place. One server with 400 queued jobs therefore delays another server's
   single job by at most the jobs already on the engines.
3. **Members of a server take turns** the same way, weighted: a member with a priority role
   (``ServerSettings.priority_roles``) gets twice the share, never the whole queue. A
   member's own jobs run in the order they were asked for. A soft per-member limit keeps one
   member from holding several engines while others wait (with nobody else waiting, the GPU
   is not left idle for it).
4. **Affinity.** Among the next ``affinity_window`` jobs of the chosen server, one whose model
   (and LoRA stack) an engine already holds may go before the server's next job, so a
   loaded model is reused instead of swapped out. The wait this adds is bounded, which is the
   aging rule: a job passed over ``affinity_max_skips`` times, or waiting longer than
   ``affinity_max_wait_s``, is never passed over again. Affinity never reorders servers.
5. **Batching.** Jobs that could share one engine call (the engine's own rule,
   :func:`engine.recipe.batching.batch_key`: same model, VAE, LoRA stack in order, size,
   steps, sampler, CFG, clip skip, embeddings, prediction type) are handed over together,
   up to ``max_batch``, as one unit of an engine's depth, when no other server is waiting for a turn. When another
   server's first job arrives while the engines are full, the dispatcher takes back the jobs
   that have not started yet (see :meth:`is_newcomer`), so the newcomer waits only for what
   is already running; the jobs taken back keep their place and their paid turn.

Virtual-time fair queueing rather than plain round-robin because jobs differ in cost: a
4-image 1024x1024 job takes many times a 512x512 draft, and a turn should be GPU time, not a
request count (deficit round-robin weighs turns the same way).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bot.jobs.model import Job
from engine.protocol import Recipe
from engine.recipe.batching import batch_key

#: How far below the lowest active level a newly active flow starts (so it goes next).
_NEW_FLOW_LEAD = 1e-6
#: Levels of idle members (and of idle servers) kept so that coming back neither banks credit
#: nor loses a place; beyond this many, the least recently served idle ones are forgotten and
#: start again like newcomers. Without a bound the tables grow with every member who ever
#: asked for an image, for as long as the bot runs.
REMEMBERED_IDLE = 10_000

Stack = tuple[tuple[str, float], ...]


def lora_stack(recipe: Recipe) -> Stack:
    """The LoRA stack as a set: order in the stack does not change the image."""
    return tuple(sorted((lora.file, round(float(lora.weight), 6)) for lora in recipe.loras))


@dataclass
class EngineView:
    """What the scheduler needs to know about one engine."""

    name: str
    #: Units of depth left: a job, or a batch of compatible jobs, is one unit.
    free_units: int
    #: The model (and stack) the engine holds or is about to hold, if known.
    model: str | None = None
    stack: Stack | None = None
    idle: bool = True
    #: Every model the engine says it holds on the device (newer engines' ``/health``).
    models: frozenset[str] = frozenset()

    def holds(self, model: str) -> bool:
        return model == self.model or model in self.models


@dataclass
class Assignment:
    engine: str
    jobs: list[Job]


@dataclass
class _Flow:
    """One member's queued jobs in a server, oldest first."""

    key: tuple[int, int]
    jobs: deque[Job] = field(default_factory=deque)


class FairScheduler:
    """Holds the queued jobs and decides what each free engine gets next."""

    def __init__(
        self,
        *,
        cost: Callable[[Job], float] = lambda job: 1.0,
        affinity_window: int = 8,
        affinity_max_skips: int = 3,
        affinity_max_wait_s: float = 60.0,
        max_batch: int = 4,
        clock: Callable[[], float] = time.time,
        remembered_idle: int = REMEMBERED_IDLE,
    ) -> None:
        self.cost = cost
        self.affinity_window = max(1, affinity_window)
        self.affinity_max_skips = affinity_max_skips
        self.affinity_max_wait_s = affinity_max_wait_s
        self.max_batch = max(1, max_batch)
        self.clock = clock
        self.remembered_idle = max(1, remembered_idle)
        self._retry: deque[Job] = deque()
        self._guilds: dict[int, dict[int, _Flow]] = {}
        self._guild_vt: dict[int, float] = {}
        self._user_vt: dict[tuple[int, int], float] = {}
        #: Jobs on engines per (guild, member), for the soft per-member limit.
        self.active: dict[tuple[int, int], int] = {}
        #: The per-member limit of each server (``ServerSettings.active_jobs_per_user``).
        self.active_limit: dict[int, int] = {}
        self._queued: dict[str, Job] = {}
        self.version = 0  # bumped on every change, so views know when to recompute

    # -- contents ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._queued)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._queued

    def queued(self) -> list[Job]:
        return list(self._queued.values())

    def is_newcomer(self, guild_id: int) -> bool:
        """True if the server has nothing queued and nothing on an engine."""
        return guild_id not in self._guilds and not any(g == guild_id for g, _ in self.active)

    def add(self, job: Job, *, front: bool = False) -> None:
        """Queue ``job``; ``front`` for a job an engine lost, which runs before anything else.

        A ``job.prepaid`` job (taken back from an engine) goes to the front of its member's
        line and is not charged again when it is taken.
        """
        if job.id in self._queued:
            return
        self._queued[job.id] = job
        self.version += 1
        if front:
            self._retry.append(job)
            return
        users = self._guilds.get(job.guild_id)
        if users is None:
            self._guild_vt[job.guild_id] = self._start_level(
                self._guild_vt.get(job.guild_id, 0.0),
                [self._guild_vt[g] for g in self._guilds],
            )
            users = self._guilds[job.guild_id] = {}
        flow = users.get(job.user_id)
        if flow is None:
            key = (job.guild_id, job.user_id)
            self._user_vt[key] = self._start_level(
                self._user_vt.get(key, 0.0), [self._user_vt[f.key] for f in users.values()]
            )
            flow = users[job.user_id] = _Flow(key)
        if job.prepaid:
            flow.jobs.appendleft(job)
        else:
            flow.jobs.append(job)

    @staticmethod
    def _start_level(own: float, active: list[float]) -> float:
        if not active:
            return own
        return max(own, min(active) - _NEW_FLOW_LEAD)

    def remove(self, job: Job) -> bool:
        """Take ``job`` out of the queue (cancelled); False if it was not queued."""
        if self._queued.pop(job.id, None) is None:
            return False
        self.version += 1
        if job in self._retry:
            self._retry.remove(job)
            return True
        users = self._guilds.get(job.guild_id, {})
        flow = users.get(job.user_id)
        if flow is not None:
            flow.jobs.remove(job)
            self._drop_if_empty(job.guild_id, job.user_id)
        return True

    def _drop_if_empty(self, guild_id: int, user_id: int) -> None:
        users = self._guilds.get(guild_id)
        if users is None:
            return
        flow = users.get(user_id)
        if flow is not None and not flow.jobs:
            del users[user_id]
        if not users:
            del self._guilds[guild_id]

    def on_engine(self, job: Job) -> None:
        """``job`` is on an engine without having been planned here (found there after a restart)."""
        key = (job.guild_id, job.user_id)
        self.active[key] = self.active.get(key, 0) + 1
        self.version += 1

    def left_engine(self, job: Job) -> None:
        """``job`` is no longer on an engine (finished, failed, lost)."""
        key = (job.guild_id, job.user_id)
        if self.active.get(key, 0) > 1:
            self.active[key] -= 1
        else:
            self.active.pop(key, None)
        self.version += 1

    # -- order -------------------------------------------------------------------------------

    def fair_order(self) -> Iterator[Job]:
        """Every queued job in the order fairness alone would run them (for positions/ETAs).

        A simulation on copies of the virtual times: O(n log n), nothing is charged.
        """
        yield from self._retry
        heap: list[tuple[float, float, int, Iterator[Job], int]] = []
        tie = itertools.count()
        for guild_id in self._guilds:
            cursor = self._guild_cursor(guild_id, respect_limits=False)
            self._push_cursor(heap, self._guild_vt[guild_id], cursor, guild_id, tie)
        while heap:
            level, _, _, cursor, guild_id = heapq.heappop(heap)
            job = next(cursor, None)
            if job is None:
                continue
            yield job
            self._push_cursor(heap, level + self.cost(job), cursor, guild_id, tie)

    @staticmethod
    def _push_cursor(heap: list[Any], level: float, cursor: Any, guild_id: int, tie: Any) -> None:
        heapq.heappush(heap, (level, 0.0, next(tie), cursor, guild_id))

    def _guild_cursor(self, guild_id: int, *, respect_limits: bool) -> Iterator[Job]:
        """The server's jobs in the order its members' turns come (simulated, not charged)."""
        limit = self.active_limit.get(guild_id, 0)
        heap: list[tuple[float, float, int, _Flow, int]] = []
        for flow in self._guilds.get(guild_id, {}).values():
            if respect_limits and limit > 0 and self.active.get(flow.key, 0) >= limit:
                continue
            if flow.jobs:
                heapq.heappush(heap, (self._user_vt[flow.key], flow.jobs[0].created_at, id(flow), flow, 0))
        while heap:
            level, _, ident, flow, index = heapq.heappop(heap)
            job = flow.jobs[index]
            yield job
            if index + 1 < len(flow.jobs):
                nxt = flow.jobs[index + 1]
                heapq.heappush(heap, (level + self.cost(job) / max(1, job.weight), nxt.created_at, ident, flow, index + 1))

    # -- decisions ---------------------------------------------------------------------------

    def plan(self, engines: list[EngineView]) -> list[Assignment]:
        """Fill the free engines; the chosen jobs leave the queue and count as on an engine."""
        free = sorted((e for e in engines if e.free_units > 0), key=lambda e: (not e.idle, e.name))
        out: list[Assignment] = []
        while free and self._queued:
            choice = self._choose(free)
            if choice is None:
                break
            job, engine, guild_lone = choice
            group = [job]
            if guild_lone and not self._retry:
                group += self._batch_mates(job)
            for member in group:
                self._take(member)
            out.append(Assignment(engine.name, group))
            engine.free_units -= 1
            engine.model, engine.stack, engine.idle = job.recipe.model, lora_stack(job.recipe), False
            if engine.free_units <= 0:
                free.remove(engine)
        return out

    def _choose(self, free: list[EngineView]) -> tuple[Job, EngineView, bool] | None:
        if self._retry:
            job = self._retry[0]
            return job, self._engine_for(job, free), False
        guild_id = self._next_guild(respect_limits=True)
        respect = guild_id is not None
        if guild_id is None:  # everyone waiting is at their limit: run theirs rather than idle
            guild_id = self._next_guild(respect_limits=False)
        if guild_id is None:
            return None
        window = list(itertools.islice(self._guild_cursor(guild_id, respect_limits=respect), self.affinity_window))
        if not window:
            return None
        lone = len(self._guilds) == 1
        head = window[0]
        holder = self._holder(head, free)
        if holder is not None:
            return head, holder, lone
        # Affinity: a later job of this server whose model a free engine holds, if every job
        # it passes may still be passed.
        now = self.clock()
        for same_stack in (True, False):
            for engine in free:
                if engine.model is None and not engine.models:
                    continue
                for index, job in enumerate(window[1:], 1):
                    if not engine.holds(job.recipe.model):
                        continue
                    if same_stack and lora_stack(job.recipe) != engine.stack:
                        continue
                    passed = window[:index]
                    if all(self._may_pass(p, now) for p in passed):
                        for p in passed:
                            p.skips += 1
                        return job, engine, lone
                    break
        return head, self._engine_for(head, free), lone

    def _may_pass(self, job: Job, now: float) -> bool:
        return job.skips < self.affinity_max_skips and now - job.created_at < self.affinity_max_wait_s

    @staticmethod
    def _holder(job: Job, free: list[EngineView]) -> EngineView | None:
        stack = lora_stack(job.recipe)
        holders = [e for e in free if e.holds(job.recipe.model)]
        holders.sort(key=lambda e: (e.stack != stack, not e.idle))
        return holders[0] if holders else None

    def _engine_for(self, job: Job, free: list[EngineView]) -> EngineView:
        """A free engine for ``job``: one holding its model, else an idle one, else any."""
        holder = self._holder(job, free)
        if holder is not None:
            return holder
        return min(free, key=lambda e: (e.model is not None or bool(e.models), not e.idle, e.name))

    def _next_guild(self, *, respect_limits: bool) -> int | None:
        best: tuple[float, float, int] | None = None
        for guild_id, users in self._guilds.items():
            limit = self.active_limit.get(guild_id, 0)
            heads = [
                flow.jobs[0].created_at
                for flow in users.values()
                if flow.jobs and not (respect_limits and limit > 0 and self.active.get(flow.key, 0) >= limit)
            ]
            if not heads:
                continue
            candidate = (self._guild_vt[guild_id], min(heads), guild_id)
            if best is None or candidate < best:
                best = candidate
        return best[2] if best else None

    def _batch_mates(self, job: Job) -> list[Job]:
        key = batch_key(job.recipe)
        limit = self.active_limit.get(job.guild_id, 0)
        taken: dict[tuple[int, int], int] = {(job.guild_id, job.user_id): 1}
        mates: list[Job] = []
        for other in itertools.islice(self._guild_cursor(job.guild_id, respect_limits=False), self.affinity_window * 2):
            if len(mates) + 1 >= self.max_batch:
                break
            if other is job or batch_key(other.recipe) != key:
                continue
            member = (other.guild_id, other.user_id)
            if limit > 0 and self.active.get(member, 0) + taken.get(member, 0) >= limit and len(self._members_waiting(job.guild_id)) > 1:
                continue
            taken[member] = taken.get(member, 0) + 1
            mates.append(other)
        return mates

    def _members_waiting(self, guild_id: int) -> list[int]:
        return list(self._guilds.get(guild_id, {}))

    def _take(self, job: Job) -> None:
        """``job`` goes to an engine: out of the queue, its server and member charged."""
        self._queued.pop(job.id, None)
        self.version += 1
        key = (job.guild_id, job.user_id)
        self.active[key] = self.active.get(key, 0) + 1
        if job in self._retry:
            self._retry.remove(job)
            return
        if not job.prepaid:
            cost = self.cost(job)
            # Popped and put back: the tables stay ordered from least to most recently served.
            self._guild_vt[job.guild_id] = self._guild_vt.pop(job.guild_id, 0.0) + cost
            self._user_vt[key] = self._user_vt.pop(key, 0.0) + cost / max(1, job.weight)
        job.prepaid = False
        flow = self._guilds.get(job.guild_id, {}).get(job.user_id)
        if flow is not None:
            flow.jobs.remove(job)
            self._drop_if_empty(job.guild_id, job.user_id)
        self._forget_idle()

    def _forget_idle(self) -> None:
        """Drop the least recently served idle levels beyond what the tables remember.

        A member or server with a job queued, on an engine or waiting for a retry is never
        forgotten: the fair order and the limits read their entries.
        """
        if len(self._user_vt) <= self.remembered_idle and len(self._guild_vt) <= self.remembered_idle:
            return
        busy_members = set(self.active) | {(j.guild_id, j.user_id) for j in self._retry}
        busy_guilds = set(self._guilds) | {guild for guild, _ in busy_members}
        excess = len(self._user_vt) - self.remembered_idle
        if excess > 0:
            idle = (
                key for key in self._user_vt
                if key not in busy_members and key[1] not in self._guilds.get(key[0], {})
            )  # fmt: skip
            for key in list(itertools.islice(idle, excess)):  # the oldest first; stops early
                del self._user_vt[key]
        excess = len(self._guild_vt) - self.remembered_idle
        if excess > 0:
            idle_guilds = (g for g in self._guild_vt if g not in busy_guilds)
            for guild_id in list(itertools.islice(idle_guilds, excess)):
                del self._guild_vt[guild_id]
                self.active_limit.pop(guild_id, None)  # set again by the server's next submit
