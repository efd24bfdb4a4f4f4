"""The job queue: order, idempotent ids, replayable events, cancellation, failures, bounds.

These tests drive the queue with :class:`SteppingRunner`, a small real runner that obeys the
runner contract (steps, progress callbacks, cancellation checks, PNG output) and can be
paused between steps, so queue states are reached deterministically without timing. The
queue against the real diffusers generator is covered in ``test_server.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image

from engine.jobs import JobManager
from engine.protocol import EngineError, ErrorCode, LoraRef, Recipe
from engine.validation import RecipeLimits


@dataclass
class Outcome:
    images: list[bytes]
    seeds: list[int]
    timings: dict[str, float]


@dataclass
class SteppingRunner:
    """Runs ``steps * count`` steps, each waiting for ``proceed``; renders one PNG per image."""

    proceed: threading.Event = field(default_factory=threading.Event)
    waiting: threading.Event = field(default_factory=threading.Event)
    prompts: list[str] = field(default_factory=list)
    steps_run: int = 0
    fail_with: BaseException | None = None

    def __post_init__(self) -> None:
        self.proceed.set()

    def run(self, recipe: Recipe, *, on_step: Any, should_cancel: Any) -> Outcome:
        self.prompts.append(recipe.prompt)
        if self.fail_with is not None:
            raise self.fail_with
        total = recipe.steps * recipe.count
        for step in range(1, total + 1):
            if should_cancel():
                raise EngineError(ErrorCode.CANCELLED, "cancelled")
            self.waiting.set()
            self.proceed.wait()
            self.waiting.clear()
            self.steps_run += 1
            on_step(step, total)
        images = []
        for index in range(recipe.count):
            buffer = io.BytesIO()
            shade = (recipe.seed + index) % 256
            Image.new("RGB", (recipe.width, recipe.height), (shade, 0, 0)).save(buffer, "PNG")
            images.append(buffer.getvalue())
        seeds = [recipe.seed + i for i in range(recipe.count)]
        return Outcome(images, seeds, {"prepare": 0.0, "denoise": 0.0, "total": 0.0})

    def health(self) -> dict[str, Any]:
        return {"device": "cpu"}


def recipe(prompt: str = "a lighthouse", **changes: Any) -> Recipe:
    values: dict[str, Any] = {"steps": 2, "width": 64, "height": 64, **changes}
    return Recipe(model="m.safetensors", prompt=prompt, **values)


@pytest.fixture
async def runner_and_manager():
    runner = SteppingRunner()
    manager = JobManager(runner)
    await manager.start()
    yield runner, manager
    runner.proceed.set()
    await manager.stop()


async def collect(manager: JobManager, job_id: str) -> list[dict[str, Any]]:
    return [event async for event in manager.events(job_id)]


async def wait_for_step(runner: SteppingRunner) -> None:
    await asyncio.to_thread(runner.waiting.wait, 10)


async def test_jobs_run_once_each_in_submission_order(runner_and_manager) -> None:
    runner, manager = runner_and_manager
    runner.proceed.clear()
    for name in ("a", "b", "c"):
        manager.submit(name, recipe(name))
    await wait_for_step(runner)
    assert manager.status("b").position == 1
    assert manager.status("c").position == 2
    runner.proceed.set()
    for name in ("a", "b", "c"):
        assert (await collect(manager, name))[-1]["type"] == "done"
    assert runner.prompts == ["a", "b", "c"]


async def test_the_same_id_twice_runs_once_and_answers_the_existing_status(
    runner_and_manager,
) -> None:
    runner, manager = runner_and_manager
    first = manager.submit("job-1", recipe("first"))
    again = manager.submit("job-1", recipe("a different recipe"))
    assert again.id == first.id
    events = await collect(manager, "job-1")
    status = manager.submit("job-1", recipe("first"))
    assert status.state == "done"
    # Its seconds, for a bot that restarted while it ran and so never saw the "done" event.
    assert status.seconds is not None and status.seconds == events[-1]["seconds"]
    assert manager.status("job-1").seconds == status.seconds
    await asyncio.sleep(0)
    assert runner.prompts == ["first"]
    assert [e["type"] for e in events].count("done") == 1


async def test_events_are_replayed_in_full_after_the_job_ended(runner_and_manager) -> None:
    _, manager = runner_and_manager
    manager.submit("j", recipe(count=2))
    live = await collect(manager, "j")
    replay = await collect(manager, "j")
    assert live == replay
    assert [e["type"] for e in live] == ["queued", "started"] + ["progress"] * 4 + ["done"]
    assert [e["step"] for e in live if e["type"] == "progress"] == [1, 2, 3, 4]
    assert all(e["job"] == "j" for e in live)
    done = live[-1]
    assert done["images"] == 2 and done["seeds"] == [0, 1]
    assert set(done["timings"]) >= {"prepare", "denoise", "total"}
    image = Image.open(io.BytesIO(manager.image("j", 1)))
    assert image.size == (64, 64) and image.getpixel((0, 0)) == (1, 0, 0)


async def test_a_listener_joining_mid_job_gets_the_past_then_live_events(
    runner_and_manager,
) -> None:
    runner, manager = runner_and_manager
    runner.proceed.clear()
    manager.submit("j", recipe())
    await wait_for_step(runner)
    listener = asyncio.create_task(collect(manager, "j"))
    await asyncio.sleep(0)
    runner.proceed.set()
    events = await listener
    assert [e["type"] for e in events] == ["queued", "started", "progress", "progress", "done"]


async def test_cancelling_a_queued_job_removes_it_at_once(runner_and_manager) -> None:
    runner, manager = runner_and_manager
    runner.proceed.clear()
    manager.submit("running", recipe("running"))
    manager.submit("waiting", recipe("waiting"))
    await wait_for_step(runner)
    status = manager.cancel("waiting")
    assert status.state == "cancelled"
    assert status.error == {"code": "cancelled", "message": "the job was cancelled"}
    events = await collect(manager, "waiting")
    assert events[-1] == {"type": "failed", "job": "waiting", "error": status.error}
    runner.proceed.set()
    await collect(manager, "running")
    assert runner.prompts == ["running"]


async def test_cancelling_a_running_job_stops_it_at_the_next_step(runner_and_manager) -> None:
    runner, manager = runner_and_manager
    runner.proceed.clear()
    manager.submit("long", recipe(steps=50))
    await wait_for_step(runner)
    assert manager.cancel("long").state == "running"  # takes effect at the next step
    runner.proceed.set()
    events = await collect(manager, "long")
    assert events[-1]["error"]["code"] == "cancelled"
    assert manager.status("long").state == "cancelled"
    assert runner.steps_run <= 1


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (EngineError(ErrorCode.ARCH_MISMATCH, "LoRA x is sdxl, model is sd15"), "arch_mismatch"),
        (MemoryError(), "out_of_memory"),
        (RuntimeError("boom"), "internal"),
    ],
)
async def test_failures_end_with_a_coded_event_and_the_queue_goes_on(
    runner_and_manager, error: BaseException, code: str
) -> None:
    runner, manager = runner_and_manager
    runner.fail_with = error
    manager.submit("bad", recipe())
    failed = (await collect(manager, "bad"))[-1]
    assert failed["type"] == "failed" and failed["error"]["code"] == code
    assert failed["error"]["message"]
    assert manager.status("bad").state == "failed"
    runner.fail_with = None
    manager.submit("next", recipe())
    assert (await collect(manager, "next"))[-1]["type"] == "done"


async def test_invalid_recipes_are_refused_before_queueing(runner_and_manager) -> None:
    _, manager = runner_and_manager
    with pytest.raises(EngineError) as caught:
        manager.submit("long", recipe("x" * 10_001))
    assert caught.value.code is ErrorCode.INVALID_RECIPE
    assert "10000" in caught.value.message.replace(",", "")
    with pytest.raises(EngineError, match="Euler") as sampler:
        manager.submit("sampler", recipe(sampler="Euler z"))
    assert sampler.value.code is ErrorCode.INVALID_RECIPE
    bad_recipes = (
        recipe(steps=0),
        recipe(width=65),
        recipe(count=9),
        recipe(cfg_scale=99.0),
        recipe(seed=-1),
        recipe(loras=(LoraRef("a.safetensors", 11.0),)),
        # JSON values of the wrong type, which would otherwise crash the job as "internal"
        recipe(steps=True),
        recipe(model_name=5),
        recipe(loras=(LoraRef("a.safetensors", 1.0, name=3),)),  # type: ignore[arg-type]
        recipe(loras=(LoraRef("a.safetensors", 1.0, sha256="not-a-hash"),)),
    )
    for bad in bad_recipes:
        with pytest.raises(EngineError) as refused:
            manager.submit("bad", bad)
        assert refused.value.code is ErrorCode.INVALID_RECIPE, bad
    with pytest.raises(EngineError, match="job id"):
        manager.submit("has/slash", recipe())
    with pytest.raises(EngineError) as unknown:
        manager.status("bad")
    assert unknown.value.code is ErrorCode.UNKNOWN_JOB


async def test_images_are_kept_for_a_bounded_number_of_jobs() -> None:
    runner = SteppingRunner()
    manager = JobManager(runner, max_jobs_with_images=2, max_history=3, limits=RecipeLimits())
    await manager.start()
    try:
        for name in ("one", "two", "three"):
            manager.submit(name, recipe(name))
            await collect(manager, name)
        with pytest.raises(EngineError, match="no longer kept") as caught:
            manager.image("one", 0)
        assert caught.value.code is ErrorCode.UNKNOWN_JOB
        assert manager.image("three", 0).startswith(b"\x89PNG")
        manager.submit("four", recipe("four"))
        await collect(manager, "four")
        with pytest.raises(EngineError, match="remembers"):
            manager.status("one")  # history holds three jobs
        assert manager.status("two").state == "done"
    finally:
        await manager.stop()


async def test_old_finished_jobs_keep_only_their_last_progress_event() -> None:
    manager = JobManager(SteppingRunner(), max_jobs_with_full_events=1)
    await manager.start()
    try:
        for name in ("old", "new"):
            manager.submit(name, recipe(name, steps=5))
            await collect(manager, name)
        old = [e["type"] for e in await collect(manager, "old")]
        new = [e["type"] for e in await collect(manager, "new")]
        assert old == ["queued", "started", "progress", "done"]
        assert new == ["queued", "started"] + ["progress"] * 5 + ["done"]
        assert (await collect(manager, "old"))[2]["step"] == 5
    finally:
        await manager.stop()


async def test_stopping_tells_every_listener_how_its_job_ended_and_refuses_new_jobs() -> None:
    runner = SteppingRunner()
    manager = JobManager(runner)
    await manager.start()
    runner.proceed.clear()
    manager.submit("running", recipe(steps=50))
    manager.submit("waiting", recipe())
    await wait_for_step(runner)
    listeners = [asyncio.create_task(collect(manager, j)) for j in ("running", "waiting")]
    await asyncio.sleep(0)
    stopping = asyncio.create_task(manager.stop())
    await asyncio.sleep(0)
    runner.proceed.set()  # the running job reaches its next step and sees the cancel
    await stopping
    for task in listeners:
        last = (await asyncio.wait_for(task, 10))[-1]
        assert last["type"] == "failed" and last["error"]["code"] == "cancelled"
    assert manager.status("running").state == "cancelled"
    assert runner.steps_run <= 1
    with pytest.raises(EngineError) as caught:
        manager.submit("late", recipe())
    assert caught.value.code is ErrorCode.ENGINE_UNAVAILABLE
    await manager.stop()  # a second stop is harmless


async def test_images_are_kept_within_a_byte_budget_newest_first() -> None:
    runner = SteppingRunner()
    manager = JobManager(runner, max_image_bytes=1)  # room for the newest job only
    await manager.start()
    try:
        for name in ("old", "new"):
            manager.submit(name, recipe(name))
            await collect(manager, name)
        with pytest.raises(EngineError, match="no longer kept"):
            manager.image("old", 0)
        assert manager.image("new", 0).startswith(b"\x89PNG")
    finally:
        await manager.stop()


@dataclass
class BatchingRunner(SteppingRunner):
    """A SteppingRunner that also takes compatible jobs together, as the real generator does."""

    max_batch_images: int = 4
    batches: list[list[str]] = field(default_factory=list)
    prefetched: list[str] = field(default_factory=list)
    #: A call of several jobs sets ``entered`` and waits for ``gate`` before its first step.
    entered: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.gate.set()

    def run_batch(self, recipes: list[Recipe], *, on_step: Any, should_cancel: Any) -> list[Outcome]:
        self.batches.append([r.prompt for r in recipes])
        if len(recipes) > 1:
            self.entered.set()
            self.gate.wait(10)
        # Like the generator: a shared call stops only when every job in it asks to.
        everyone = lambda: all(cancel() for cancel in should_cancel)  # noqa: E731
        return [self.run(r, on_step=step, should_cancel=everyone) for r, step in zip(recipes, on_step, strict=True)]

    def prefetch(self, recipe: Recipe) -> None:
        self.prefetched.append(recipe.prompt)


async def test_queued_jobs_sharing_a_batch_key_run_in_one_call_in_order() -> None:
    runner = BatchingRunner()
    manager = JobManager(runner)
    await manager.start()
    try:
        runner.proceed.clear()
        manager.submit("first", recipe("first"))
        await wait_for_step(runner)  # "first" runs alone: nothing else was queued yet
        manager.submit("a", recipe("a", seed=1))
        manager.submit("other-size", recipe("other-size", width=128))
        manager.submit("b", recipe("b", seed=2, count=2))
        manager.submit("c", recipe("c", count=2))  # would make 5 images: over the limit
        runner.proceed.set()
        for name in ("first", "a", "other-size", "b", "c"):
            assert (await collect(manager, name))[-1]["type"] == "done"
    finally:
        runner.proceed.set()
        await manager.stop()
    assert runner.batches == [["first"], ["a", "b"], ["other-size"], ["c"]]
    assert runner.prefetched[:2] == ["other-size", "c"]  # the next job's files, while a batch runs


async def test_a_job_cancelled_inside_a_shared_call_is_cancelled_and_the_others_finish() -> None:
    runner = BatchingRunner()
    manager = JobManager(runner)
    await manager.start()
    try:
        runner.proceed.clear()
        runner.gate.clear()
        manager.submit("blocker", recipe("blocker"))
        await wait_for_step(runner)
        manager.submit("keep", recipe("keep"))
        manager.submit("drop", recipe("drop"))
        runner.proceed.set()
        await asyncio.to_thread(runner.entered.wait, 10)  # keep and drop share a call now
        assert manager.status("drop").state == "running"
        manager.cancel("drop")
        runner.gate.set()
        events = {name: await collect(manager, name) for name in ("keep", "drop")}
    finally:
        runner.proceed.set()
        runner.gate.set()
        await manager.stop()
    assert runner.batches[-1] == ["keep", "drop"]
    assert events["keep"][-1]["type"] == "done"
    assert events["drop"][-1] == {"type": "failed", "job": "drop",
                                  "error": {"code": "cancelled", "message": "the job was cancelled"}}  # fmt: skip


async def test_models_in_use_are_those_of_the_running_and_queued_jobs(runner_and_manager) -> None:
    """What a cluster replica asks before evicting a model Serve dropped (engine.cluster.replica)."""
    runner, manager = runner_and_manager
    assert manager.models_in_use() == set()
    runner.proceed.clear()
    manager.submit("running", dataclasses.replace(recipe(), model="a.safetensors"))
    await wait_for_step(runner)
    manager.submit("queued", dataclasses.replace(recipe(), model="b.safetensors"))
    assert manager.models_in_use() == {"a.safetensors", "b.safetensors"}
    manager.cancel("queued")
    assert manager.models_in_use() == {"a.safetensors"}
    runner.proceed.set()
    await collect(manager, "running")
    assert manager.models_in_use() == set()
