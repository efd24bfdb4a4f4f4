"""A replica runner that takes a fixed time per job: the stand-in GPU of the cluster tests.

It plugs into :class:`engine.jobs.JobManager` like the real generator (``run``, ``health``),
so a cluster replica runs the engine's own queue in front of it; only the denoising is a
sleep. A model it does not hold costs ``switch_seconds`` to "load", and it counts loads, so
the tests and ``python -m tests.bench.cluster`` can tell whether Serve sent a job to the
replica that held its model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.protocol import EngineError, ErrorCode, Recipe
from tests.standin_engine import tiny_png


@dataclass
class Outcome:
    images: list[bytes]
    seeds: list[int]
    timings: dict[str, Any] = field(default_factory=dict)


class StandinRunner:
    def __init__(self, seconds_per_step: float = 0.05, switch_seconds: float = 0.0) -> None:
        #: A job takes ``steps * count * seconds_per_step``: a test picks a job's length by its steps.
        self.seconds_per_step = seconds_per_step
        self.switch_seconds = switch_seconds
        self.loaded: set[str] = set()
        self.loads = 0
        self._lock = threading.Lock()

    def run(self, recipe: Recipe, *, on_step: Callable[[int, int], None], should_cancel: Callable[[], bool]) -> Outcome:
        with self._lock:
            miss = recipe.model not in self.loaded
            self.loaded.add(recipe.model)
            self.loads += miss
        if miss:
            time.sleep(self.switch_seconds)
        total = recipe.steps * max(1, recipe.count)
        for step in range(1, total + 1):
            time.sleep(self.seconds_per_step)
            if should_cancel():
                raise EngineError(ErrorCode.CANCELLED, "the job was cancelled")
            on_step(step, total)
        text = f"{recipe.prompt}\nSteps: {recipe.steps}, Seed: {recipe.seed}, Size: {recipe.width}x{recipe.height}"
        return Outcome(images=[tiny_png(text) for _ in range(max(1, recipe.count))], seeds=[recipe.seed])

    def evict(self, model: str) -> None:
        with self._lock:
            self.loaded.discard(model)

    def health(self) -> dict[str, Any]:
        with self._lock:
            return {"models": [{"file": m, "tier": "device"} for m in sorted(self.loaded)], "loads": self.loads}
