"""One engine replica of the Serve application: one GPU, the standalone engine's own code.

A replica holds a :class:`~engine.jobs.JobManager` in front of its runner, exactly as
``python -m engine serve`` does, so its queue batches compatible jobs, reads the next job's
files ahead, and stops a cancelled job at its next denoising step.

Which models a replica holds is Serve's to decide: every job names its base model as the
multiplexed model id (the model file, the same path on every node), Serve routes it to a
replica that holds that model when one can take it, and the replica's ``@serve.multiplexed``
loader keeps at most ``models_per_replica`` of them, least recently used first. Its loader
does not load a second copy beside the generator's model cache: it records the model, the
job's run loads it into the cache as in the standalone engine, and when Serve evicts the
model the replica evicts it from that same cache (after the jobs using it end). The
cache's byte budget stays as the safety net it is on one GPU.

``run`` is a streaming call: the job's events, its images on ``done`` (``image_data``). The ingress
cancels the call to cancel the job; Ray delivers that at the replica's next ``await``, where
the job is flagged and stops at its next step (a sync call could not be stopped: Ray cancels
only at an await, which is why the job itself runs in the manager's worker thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from ray import serve

from engine.cluster.settings import GENERATOR, ClusterSettings
from engine.jobs import JobManager
from engine.protocol import TERMINAL_EVENTS, EngineError, ErrorCode, Recipe

log = logging.getLogger("engine.cluster.replica")


class _Held:
    """What Serve's multiplexing keeps per model id; dropping it evicts the model."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def __del__(self) -> None:
        # Serve calls this when it evicts the model, and the garbage collector may call it
        # again later: the release runs once.
        release, self._release = self._release, None
        if release is not None:
            release()


class _GeneratorModels:
    """Holds and evicts base models in a :class:`~engine.generate.Generator`'s model cache."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def key(self, model: str) -> str:
        from engine.paths import resolve_within

        path = resolve_within(self.generator.model_root, model, allow_dir=True)
        return str(self.generator.inspect(path).sha256)

    def evict(self, model: str) -> None:
        with contextlib.suppress(EngineError):
            self.generator.models.evict(self.key(model))


def build_runner(settings: ClusterSettings) -> tuple[Any, Callable[[str], None]]:
    """The replica's runner and how it evicts a model: the real generator, or a test's."""
    if settings.runner != GENERATOR:
        module, _, name = settings.runner.partition(":")
        runner = getattr(importlib.import_module(module), name)(**dict(settings.runner_args))
        return runner, runner.evict
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from engine.__main__ import resolve_device
    from engine.generate import Generator

    device, dtype = resolve_device(settings.device, settings.dtype)
    generator = Generator(
        settings.models,
        settings.loras,
        device=device,
        dtype=dtype,
        model_device_budget=settings.model_device_budget,
        model_host_budget=settings.model_host_budget,
        max_batch_images=settings.max_batch_images,
    )
    return generator, _GeneratorModels(generator).evict


class EngineReplica:
    """A Serve deployment class (decorated in :mod:`engine.cluster.app`)."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.settings = ClusterSettings.from_args(args)
        self.runner, self._evict = build_runner(self.settings)
        self.manager = JobManager(self.runner)
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        self.pid = os.getpid()
        #: Models Serve's multiplexing holds here, and those it evicted while a job used them.
        self.held: set[str] = set()
        self._evict_after: set[str] = set()
        self._lock = threading.Lock()
        self._started = False
        self.hits = self.misses = 0

        async def hold(model_id: str) -> _Held:
            with self._lock:
                self.held.add(model_id)
                self._evict_after.discard(model_id)
            return _Held(lambda: self._release(model_id))

        # Built per instance so that the number of models comes from the config file.
        self._hold = serve.multiplexed(max_num_models_per_replica=self.settings.models_per_replica)(hold)

    def _release(self, model_id: str) -> None:
        with self._lock:
            self.held.discard(model_id)
            if model_id in self.manager.models_in_use():
                self._evict_after.add(model_id)  # a job here still uses it: after that job
                return
        self._evict(model_id)

    def _evict_unused(self) -> None:
        with self._lock:
            due = self._evict_after - self.manager.models_in_use() - self.held
            self._evict_after -= due
        for model_id in due:
            self._evict(model_id)

    async def _start(self) -> None:
        if not self._started:
            self._started = True
            await self.manager.start()

    async def run(
        self, job_id: str, recipe_json: dict[str, Any], init_image: bytes | None = None,
        references: Sequence[bytes] = (),
    ) -> AsyncIterator[dict[str, Any]]:
        """The job's events, its images on ``done`` (``image_data``, PNG bytes); see the module.
        ``init_image``: an image-to-image job's input, and ``references`` an edit's further
        pictures, which the ingress holds (``POST /inputs``)."""
        await self._start()
        recipe = Recipe.from_json(recipe_json)
        pictures = [data for data in (init_image, *references) if data is not None]
        if pictures:
            inputs = getattr(self.runner, "inputs", None)
            try:
                if inputs is None:
                    raise EngineError(ErrorCode.INVALID_RECIPE, "this engine's runner takes no input images")
                for data in pictures:
                    await asyncio.to_thread(inputs.put, data)
            except EngineError as exc:
                yield {"type": "failed", "job": job_id, **exc.to_json()}
                return
        model_id = serve.get_multiplexed_model_id() or recipe.model
        hit = model_id in self.held
        self.hits, self.misses = self.hits + hit, self.misses + (not hit)
        await self._hold(model_id)
        yield {"type": "replica", "replica": self.replica_id, "pid": self.pid, "hit": hit,
               "models": sorted(self.held)}  # fmt: skip
        try:
            self.manager.submit(job_id, recipe)
        except EngineError as exc:  # refused here (its queue full, shutting down): said as the engine says it
            yield {"type": "failed", "job": job_id, **exc.to_json()}
            return
        finished = False
        try:
            async for event in self.manager.events(job_id):
                if event["type"] == "done":
                    # On the done item itself: one item less through Ray per image, on the
                    # path between the job's end and its post.
                    images = [self.manager.image(job_id, index) for index in range(int(event.get("images", 0)))]
                    event = {**event, "image_data": images}
                yield event
                if event["type"] in TERMINAL_EVENTS:
                    finished = True
        finally:
            if not finished:  # cancelled by the ingress (at an await), or the stream was dropped
                with contextlib.suppress(EngineError):
                    self.manager.cancel(job_id)
            self._evict_unused()

    async def health(self) -> dict[str, Any]:
        await self._start()
        try:
            runner = await asyncio.wait_for(asyncio.to_thread(self.runner.health), 2.0)
        except Exception as exc:  # health must answer while a job changes the generator
            runner = {"note": f"the generator's details could not be read ({exc!r})"}
        return {"replica": self.replica_id, "pid": self.pid, "held": sorted(self.held),
                "hits": self.hits, "misses": self.misses, "queue": self.manager.queue_info(),
                "runner": runner}  # fmt: skip

