"""The engines the bot feeds: one per GPU or machine, each with its depth and health.

Each job goes to a free engine, preferring one that holds its model (the scheduler decides,
from :meth:`EnginePool.views`). An engine is free while it has fewer than ``depth`` units in
flight; a unit is one job, or a batch of compatible jobs handed over back to back. With a
depth of 2 the engine always holds the next job while the current one denoises, so it can
read that job's files meanwhile and never waits for the bot, let alone for Discord.

Health is watched two ways: a job's own event stream fails at once when an engine dies, and
a loop asks ``/health`` (every second while an engine is down, every ten while it is up).
``/health`` also says which models the engine holds: the ``models`` list of newer engines, or
``loaded_model`` of older ones. Addresses and errors stay in the log and in the admins'
``/queue`` view; members only ever read that "the image engine" is down.

A Ray Serve cluster (``engine_backend = "ray"``, :mod:`engine.cluster`) is one slot here: its
ingress speaks the engine API, so jobs, recovery and retries take the same path. What Serve
does itself is left out of that slot: its depth is the cluster's own capacity (its running
replicas times the jobs each holds, from ``/health``, so it grows as Serve scales up), it
reports no held models (Serve routes each job to a replica holding its model; affinity here
would reorder jobs for nothing), and a job lost with a replica does not keep the cluster out
of use: it is checked again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.engine_link.process import EngineProcess
from bot.jobs.model import Job
from bot.jobs.scheduler import EngineView, Stack, lora_stack
from engine.client import EngineClient
from engine.protocol import EngineError

log = logging.getLogger(__name__)

CHECK_UP_S = 10.0
CHECK_DOWN_S = 1.0
HEALTH_TIMEOUT_S = 5.0


@dataclass
class EngineLink:
    """One engine the bot uses: its client, and its process when the bot started it."""

    client: EngineClient
    process: EngineProcess | None = None
    #: A Ray Serve cluster behind one address (see the module docstring).
    cluster: bool = False


#: How often a cluster's ``/health`` is read while it is up: its capacity follows Serve's scaling.
CHECK_CLUSTER_S = 2.0


@dataclass
class EngineSlot:
    name: str
    client: EngineClient
    process: EngineProcess | None = None
    healthy: bool = False
    #: The model the engine last ran (or was handed), and what ``/health`` says it holds.
    model: str | None = None
    stack: Stack | None = None
    models: frozenset[str] = frozenset()
    #: Units in flight: each a list of the jobs handed over together.
    units: list[list[Job]] = field(default_factory=list)
    #: For operators (log, admins): why it is down, since when.
    problem: str = ""
    down_since: float | None = None
    checked_at: float = 0.0
    cluster: bool = False
    #: A cluster's units (replicas times jobs per replica), and what it says of each replica.
    capacity: int | None = None
    replicas: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        """What the job table stores to remember where a job went (never shown to members)."""
        return self.client.base_url

    @property
    def owned(self) -> bool:
        return self.process is not None

    def jobs(self) -> list[Job]:
        return [job for unit in self.units for job in unit]

    def hand_over(self, jobs: list[Job]) -> None:
        self.units.append(list(jobs))
        self.model = jobs[0].recipe.model
        self.stack = lora_stack(jobs[0].recipe)

    def release(self, job: Job) -> None:
        for unit in self.units:
            if job in unit:
                unit.remove(job)
                break
        self.units = [unit for unit in self.units if unit]


class EnginePool:
    """The slots, their health loop, and the views the scheduler plans with."""

    def __init__(
        self,
        links: Sequence[EngineLink],
        *,
        depth: int = 2,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        if not links:
            raise ValueError("at least one engine is needed")
        self.depth = max(1, depth)
        self.on_change = on_change
        self.slots = [
            EngineSlot(
                name="Ray Serve cluster" if link.cluster else f"engine {index}",
                client=link.client, process=link.process, cluster=link.cluster,
            )  # fmt: skip
            for index, link in enumerate(links, 1)
        ]
        self._loop: asyncio.Task[None] | None = None
        for slot in self.slots:
            if slot.process is not None:
                slot.process.on_exit = self._exit_handler(slot, slot.process.on_exit)

    def _exit_handler(self, slot: EngineSlot, chained: Any) -> Callable[[int | None], Any]:
        """The bot learns of an engine's death from the process itself, at once."""

        def on_exit(code: int | None) -> Any:
            self.mark_down(slot, f"the engine process exited with code {code}")
            return chained(code) if chained is not None else None

        return on_exit

    @property
    def primary(self) -> EngineClient:
        """The engine for one-off questions (inspect a file, list files): a healthy one."""
        for slot in self.slots:
            if slot.healthy:
                return slot.client
        return self.slots[0].client

    def slot(self, key: str | None) -> EngineSlot | None:
        return next((slot for slot in self.slots if slot.key == key), None)

    def healthy(self) -> list[EngineSlot]:
        return [slot for slot in self.slots if slot.healthy]

    def views(self) -> list[EngineView]:
        return [
            EngineView(
                name=slot.key,
                free_units=self.units_of(slot) - len(slot.units),
                model=None if slot.cluster else slot.model,
                stack=None if slot.cluster else slot.stack,
                idle=not slot.units,
                models=frozenset() if slot.cluster else slot.models,
            )
            for slot in self.slots
            if slot.healthy
        ]

    def units_of(self, slot: EngineSlot) -> int:
        """Units ``slot`` takes at once: ``depth``, or a cluster's own capacity."""
        return max(1, slot.capacity) if slot.cluster and slot.capacity else self.depth

    async def start(self) -> None:
        await asyncio.gather(*(self.check(slot) for slot in self.slots))
        self._loop = asyncio.create_task(self._watch(), name="engine-health")

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop

    async def check(self, slot: EngineSlot) -> bool:
        slot.checked_at = time.monotonic()
        try:
            health = await asyncio.wait_for(slot.client.health(), HEALTH_TIMEOUT_S)
        except (EngineError, TimeoutError, OSError) as exc:
            self.mark_down(slot, getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}")
            return False
        self._read_models(slot, health)
        if not slot.healthy:
            if slot.down_since is not None:
                log.info("%s (%s) is back after %.0f s", slot.name, slot.key, time.time() - slot.down_since)
            slot.healthy, slot.problem, slot.down_since = True, "", None
            self.on_change()
        return True

    @staticmethod
    def _read_models(slot: EngineSlot, health: dict[str, Any]) -> None:
        cluster = health.get("cluster")
        if slot.cluster:
            if isinstance(cluster, dict):
                capacity = cluster.get("capacity")
                slot.capacity = int(capacity) if isinstance(capacity, int) and capacity > 0 else None
                replicas = cluster.get("replicas")
                slot.replicas = [r for r in replicas if isinstance(r, dict)] if isinstance(replicas, list) else []
            return
        listed = health.get("models")
        if isinstance(listed, list):
            device = [m.get("file") for m in listed if isinstance(m, dict) and m.get("tier", "device") == "device"]
            slot.models = frozenset(str(f) for f in device if f)
        loaded = health.get("loaded_model")
        if isinstance(loaded, str) and loaded and not slot.units:
            slot.model = loaded

    def mark_down(self, slot: EngineSlot, problem: str) -> None:
        """The engine failed a request or its process died; its problem goes to the log."""
        if slot.healthy or not slot.problem:
            log.warning("%s (%s) is unavailable: %s", slot.name, slot.key, problem)
        if slot.healthy:
            slot.down_since = time.time()
            if slot.cluster:
                # A job lost with one replica (Ray replaces it): the others still run jobs.
                with contextlib.suppress(RuntimeError):
                    asyncio.get_running_loop().create_task(self.check(slot), name="engine-recheck")
        slot.healthy, slot.problem = False, problem
        slot.models = frozenset()
        slot.model = slot.stack = None
        self.on_change()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_DOWN_S)
            now = time.monotonic()
            due = [
                slot for slot in self.slots
                if now - slot.checked_at >= (
                    (CHECK_CLUSTER_S if slot.cluster else CHECK_UP_S) if slot.healthy else CHECK_DOWN_S
                )
            ]  # fmt: skip
            if due:
                await asyncio.gather(*(self.check(slot) for slot in due))


def replica_lines(slot: EngineSlot) -> list[str]:
    """The admins' view of a cluster: each replica's load, models held and jobs per minute."""
    if not slot.replicas:
        return ["no replica has run a job yet"]
    lines = []
    for index, replica in enumerate(slot.replicas, 1):
        models = ", ".join(f"`{m}`" for m in replica.get("models", [])[:4]) or "no model"
        lines.append(
            f"replica {index}: {replica.get('load', 0)} job(s) in hand, holding {models}, "
            f"{replica.get('jobs_per_minute', 0)} job(s) in the last minute"
        )
    return lines
