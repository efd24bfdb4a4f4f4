"""The fair scheduler on its own: turns across servers and members, affinity, batching."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from bot.jobs import FairScheduler, Job
from bot.jobs.scheduler import EngineView, batch_key
from engine.protocol import LoraRef, Recipe

_clock = itertools.count()


def job(guild: int, user: int, *, model: str = "a.safetensors", weight: int = 1, steps: int = 20,
        loras: tuple[LoraRef, ...] = (), created: float | None = None) -> Job:
    recipe = Recipe(model=model, prompt=f"p{next(_clock)}", steps=steps, loras=loras)
    made = Job(recipe=recipe, guild_id=guild, channel_id=guild * 10, user_id=user, user_name=str(user), weight=weight)
    made.created_at = created if created is not None else 1000.0 + next(_clock) * 0.001
    return made


def fair(**options: object) -> FairScheduler:
    """A scheduler handing over one job at a time (batching has its own test)."""
    options.setdefault("max_batch", 1)
    options.setdefault("clock", lambda: 1000.0)
    return FairScheduler(**options)  # type: ignore[arg-type]


def engine(name: str = "e1", *, free: int = 1, model: str | None = None) -> EngineView:
    return EngineView(name=name, free_units=free, model=model, idle=model is None)


def run_in_order(scheduler: FairScheduler, count: int, *, model: str | None = None) -> list[Job]:
    """Take ``count`` jobs one at a time from one engine, each finishing before the next."""
    taken: list[Job] = []
    for _ in range(count):
        (assignment,) = scheduler.plan([engine(model=model)])
        taken.extend(assignment.jobs)
        for member in assignment.jobs:
            scheduler.left_engine(member)
    return taken


def test_a_server_with_400_jobs_does_not_hold_up_another_servers_single_job() -> None:
    scheduler = fair(clock=lambda: 1000.0)
    for index in range(400):
        scheduler.add(job(1, 100 + index % 40))
    run_in_order(scheduler, 5)  # server 1 has been running for a while
    late = job(2, 7)
    scheduler.add(late)
    # The order fairness alone gives (for positions and ETAs) puts it first in line too.
    assert next(scheduler.fair_order()) is late
    assert run_in_order(scheduler, 1) == [late]
    assert len(scheduler) == 395


def test_servers_alternate_and_members_within_a_server_take_turns() -> None:
    scheduler = fair(clock=lambda: 1000.0)
    for _ in range(6):
        scheduler.add(job(1, 11))
    scheduler.add(job(1, 12))
    for _ in range(3):
        scheduler.add(job(2, 21))
    order = run_in_order(scheduler, 10)
    assert [j.guild_id for j in order[:6]] == [1, 2, 1, 2, 1, 2]
    server_one = [j.user_id for j in order if j.guild_id == 1]
    assert server_one[:2] == [11, 12]  # bob's single job does not wait behind alice's six


def test_order_is_by_gpu_time_not_request_count() -> None:
    costs = {10: 4.0, 1: 1.0}
    scheduler = fair(cost=lambda j: costs[j.recipe.steps])
    for _ in range(4):
        scheduler.add(job(1, 1, steps=10))  # four times the work each
    for _ in range(8):
        scheduler.add(job(2, 2, steps=1))
    order = run_in_order(scheduler, 6)
    assert Counter(j.guild_id for j in order) == Counter({2: 4, 1: 2})


def test_a_priority_role_doubles_a_members_share_and_nothing_starves() -> None:
    scheduler = fair(clock=lambda: 1000.0)
    for _ in range(30):
        scheduler.add(job(1, 1, weight=2))
        scheduler.add(job(1, 2, weight=1))
    counts = Counter(j.user_id for j in run_in_order(scheduler, 30))
    assert counts[1] == 20 and counts[2] == 10


def test_affinity_prefers_the_loaded_model_within_bounded_skips() -> None:
    scheduler = fair(clock=lambda: 1000.5, affinity_max_skips=2, affinity_max_wait_s=60)
    head = job(1, 1, model="x.safetensors", created=1000.0)
    scheduler.add(head)
    for user in range(2, 8):
        scheduler.add(job(1, user, model="loaded.safetensors", created=1000.0 + user / 100))
    picked = run_in_order(scheduler, 3, model="loaded.safetensors")
    # Two jobs of the loaded model go before the head, then the head's skips are spent.
    assert [j.recipe.model for j in picked] == ["loaded.safetensors", "loaded.safetensors", "x.safetensors"]
    assert head.skips == 2


def test_a_job_waiting_longer_than_the_affinity_bound_is_not_passed_over() -> None:
    scheduler = fair(clock=lambda: 1100.0, affinity_max_wait_s=60)
    old = job(1, 1, model="x.safetensors", created=1000.0)  # 100 s old
    scheduler.add(old)
    scheduler.add(job(1, 2, model="loaded.safetensors", created=1099.0))
    assert run_in_order(scheduler, 1, model="loaded.safetensors") == [old]


def test_affinity_never_reorders_servers() -> None:
    scheduler = fair(clock=lambda: 1000.0)
    mine = job(1, 1, model="x.safetensors")
    scheduler.add(mine)
    scheduler.add(job(2, 2, model="loaded.safetensors"))
    assert run_in_order(scheduler, 1, model="loaded.safetensors") == [mine]


def test_each_job_goes_to_the_free_engine_that_holds_its_model() -> None:
    scheduler = fair(clock=lambda: 1000.0)
    first = job(1, 1, model="b.safetensors")
    second = job(2, 2, model="a.safetensors")
    scheduler.add(first)
    scheduler.add(second)
    plan = scheduler.plan([engine("e1", model="a.safetensors"), engine("e2", model="b.safetensors")])
    assert {(a.engine, a.jobs[0].recipe.model) for a in plan} == {("e2", "b.safetensors"), ("e1", "a.safetensors")}


def test_compatible_jobs_are_handed_over_together_only_while_no_other_server_waits() -> None:
    stack = (LoraRef("s.safetensors", 0.8),)
    scheduler = FairScheduler(clock=lambda: 1000.0, max_batch=4)  # batching on
    for user in range(6):
        scheduler.add(job(1, user, loras=stack))
    scheduler.add(job(1, 9, steps=30))  # another shape: not part of the batch
    (assignment,) = scheduler.plan([engine()])
    assert len(assignment.jobs) == 4
    assert len({batch_key(j.recipe) for j in assignment.jobs}) == 1
    scheduler.add(job(2, 50, loras=stack))
    (assignment,) = scheduler.plan([engine()])
    assert len(assignment.jobs) == 1  # another server waits: one job per turn


def test_the_bot_batches_only_what_the_engine_runs_in_one_call() -> None:
    """One rule (the engine's): a stack in another order, another expected sha256 or another
    prediction type is another call on the engine, so the bot does not hand them over together."""
    import dataclasses

    from engine import jobs as engine_jobs

    assert batch_key is engine_jobs.batch_key
    a, b = LoraRef("a.safetensors", 0.5), LoraRef("b.safetensors", 0.8)
    scheduler = FairScheduler(clock=lambda: 1000.0, max_batch=4)
    first = job(1, 1, loras=(a, b))
    scheduler.add(first)
    scheduler.add(job(1, 2, loras=(b, a)))
    scheduler.add(job(1, 3, loras=(a, dataclasses.replace(b, sha256="cd" * 32))))
    other_prediction = job(1, 4, loras=(a, b))
    other_prediction.recipe = dataclasses.replace(other_prediction.recipe, prediction_type="v_prediction")
    scheduler.add(other_prediction)
    same = job(1, 5, loras=(a, b))
    scheduler.add(same)
    (assignment,) = scheduler.plan([engine()])
    assert assignment.jobs == [first, same]


def test_jobs_an_engine_lost_go_first_and_the_soft_member_limit_holds_while_others_wait() -> None:
    scheduler = fair(clock=lambda: 1000.0)
    scheduler.active_limit[1] = 1
    for _ in range(3):
        scheduler.add(job(1, 1))
    scheduler.add(job(1, 2))
    lost = job(1, 3)
    scheduler.add(lost, front=True)
    plan = scheduler.plan([engine("e1", free=3), engine("e2", free=2)])
    taken = [j for a in plan for j in a.jobs]
    assert taken[0] is lost
    # Member 1 has one job on an engine while member 2 waits, then (alone) more than one.
    assert [j.user_id for j in taken[1:3]] in ([1, 2], [2, 1])
    assert [j.user_id for j in taken[3:]] == [1, 1]


def test_a_job_taken_back_keeps_its_place_and_is_not_charged_twice() -> None:
    scheduler = fair(clock=lambda: 1000.0)
    first, second = job(1, 1), job(1, 1)
    scheduler.add(first)
    scheduler.add(second)
    (assignment,) = scheduler.plan([engine()])
    assert assignment.jobs == [first]
    assert scheduler.is_newcomer(2) and not scheduler.is_newcomer(1)
    scheduler.left_engine(first)
    first.prepaid = True
    scheduler.add(first)
    assert next(scheduler.fair_order()) is first


def test_idle_members_and_servers_are_forgotten_beyond_the_bound_busy_ones_never() -> None:
    """A bot that runs for months meets many members once: their levels must not pile up."""
    scheduler = fair(clock=lambda: 1000.0)
    scheduler.remembered_idle = 4
    running = job(1, 1)
    scheduler.active_limit[1] = 1
    scheduler.add(running)
    (assignment,) = scheduler.plan([engine()])
    assert assignment.jobs == [running]  # it stays on its engine for the whole test
    for n in range(40):  # forty members of forty servers, one job each, one after the other
        guild = 100 + n
        scheduler.active_limit[guild] = 2  # as the dispatcher sets it with each submit
        scheduler.add(job(guild, 1000 + n))
        (assignment,) = scheduler.plan([engine("e2")])
        for taken in assignment.jobs:
            scheduler.left_engine(taken)
    levels, servers = scheduler._user_vt, scheduler._guild_vt
    assert len(levels) == len(servers) == 4 and len(scheduler.active_limit) == 4
    assert (1, 1) in levels and 1 in servers and scheduler.active_limit[1] == 1  # on an engine
    assert {(137, 1037), (138, 1038), (139, 1039)} <= set(levels)  # the most recently served
    assert (100, 1000) not in levels and 100 not in servers and 100 not in scheduler.active_limit
    # Members with a job queued are never forgotten, however many there are.
    queued = [job(200 + n, 2000 + n) for n in range(10)]
    for waiting in queued:
        scheduler.add(waiting)
    (assignment,) = scheduler.plan([engine("e2")])
    scheduler.left_engine(assignment.jobs[0])
    assert {(j.guild_id, j.user_id) for j in queued} <= set(levels)
    assert len(list(scheduler.fair_order())) == 9  # every queued one still has its level
    # Served to the end, they are trimmed to the bound too; a forgotten one comes back as a
    # newcomer and goes next.
    for _ in range(9):
        (assignment,) = scheduler.plan([engine("e2")])
        scheduler.left_engine(assignment.jobs[0])
    assert len(levels) == len(servers) == 4
    again = job(100, 1000)
    scheduler.add(again)
    assert run_in_order(scheduler, 1) == [again]


def test_the_speed_book_keeps_a_bounded_number_of_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Members pick sizes and steps freely; the averages kept for them must stay bounded."""
    from bot.jobs import speed

    monkeypatch.setattr(speed, "KEPT", 4, raising=False)
    book = speed.SpeedBook()
    shapes = [Recipe(model=f"m{n % 6}.safetensors", prompt="p", steps=10 + n, width=512, height=512) for n in range(30)]
    for recipe in shapes:
        book.record(recipe, 2.0)
    assert len(book._by_shape) == 4 and len(book._rate_by_model) == 4
    assert book.estimate(shapes[-1]) == 2.0  # the newest shape is still known exactly
    old = shapes[0]  # forgotten, and so is its model: the global rate prices it
    assert old.model not in book._rate_by_model
    assert book.estimate(old) == pytest.approx(book._rate * 0.512 * 0.512 * old.steps)  # type: ignore[operator]
