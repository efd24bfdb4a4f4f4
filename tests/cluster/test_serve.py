"""The engine on Ray Serve (``engine.cluster``), on a local Ray the tests start on loopback.

The replicas run the engine's own queue in front of the stand-in runner
(:mod:`tests.cluster_standin`: a fixed time per step, no GPU); the bot is the real
``python -m bot`` with ``ATELIER_ENGINE_BACKEND=ray``. One Ray for the module, shut down at
its end (no raylet outlives it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.jobs import EngineLink, EnginePool, JobState, JobStore
from bot.registry import Registry
from engine.client import EngineClient
from engine.protocol import EngineError, ErrorCode, LoraRef, Recipe
from sandbox.discord_double import MANAGE_GUILD, DiscordDouble
from tests.bot.conftest import FAST, png_parameters, seed_registry
from tests.bot.test_imagine_flow import is_result
from tests.bot.test_process import wait_commands
from tests.bot_process import end_process, spawn_bot
from tests.cluster_ray import cluster_args, deploy, free_port, local_ray
from tests.conftest import ENGINE_TOKEN


@pytest.fixture(scope="module")
def ray_port() -> Iterator[int]:
    with local_ray():
        yield free_port()


@pytest.fixture(scope="module")
def cluster(ray_port: int, demo_assets: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two replicas holding one model each (so a model on the wrong replica would show)."""
    args = cluster_args(tmp_path_factory.mktemp("cluster"), models=str(demo_assets.model_root),
                        loras=str(demo_assets.lora_root), token=ENGINE_TOKEN, models_per_replica=1)  # fmt: skip
    return deploy(args, ray_port)


async def health(url: str) -> dict[str, Any]:
    async with EngineClient(url, token=ENGINE_TOKEN) as client:
        return await client.wait_ready(60)


async def until(check: Callable[[], Awaitable[bool]], within: float, every: float = 0.2) -> None:
    """Poll ``check`` until it holds or ``within`` seconds pass (the caller asserts after)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and not await check():  # noqa: ASYNC110 (polls a service)
        await asyncio.sleep(every)


async def replicas_running(url: str, count: int) -> bool:
    return (await health(url))["cluster"]["running_replicas"] == count


def recipe(model: str, steps: int = 2, seed: int = 1) -> Recipe:
    return Recipe(model=model, prompt="a lighthouse", steps=steps, seed=seed, width=256, height=256)


async def test_each_models_jobs_land_on_the_replica_that_holds_it(cluster: str, demo_assets: Any) -> None:
    models = [demo_assets.models["sd15"], demo_assets.models["sdxl"]]
    before = {r["id"]: r for r in (await health(cluster))["cluster"]["replicas"]}
    async with EngineClient(cluster, token=ENGINE_TOKEN) as client:
        for index in range(8):  # interleaved: A, B, A, B, ...
            images = await client.run(f"route-{index}", recipe(models[index % 2], seed=index))
            assert png_parameters(images[0]).endswith("Size: 256x256")
    report = await health(cluster)
    replicas = report["cluster"]["replicas"]
    assert report["cluster"]["running_replicas"] == 2
    # Each replica holds one model; a job sent to the other replica would have evicted it.
    held = sorted(tuple(r["models"]) for r in replicas)
    assert held == sorted((m,) for m in models), replicas
    misses = sum(r["model_misses"] - before.get(r["id"], {}).get("model_misses", 0) for r in replicas)
    hits = sum(r["model_hits"] - before.get(r["id"], {}).get("model_hits", 0) for r in replicas)
    assert (misses, hits) == (2, 6), replicas
    assert all(r["jobs_per_minute"] >= 4 for r in replicas)


async def test_a_cluster_client_gets_the_images_on_the_event_stream_without_a_request_each(
    cluster: str, demo_assets: Any
) -> None:
    """The bot's client for a cluster (``inline_images``) asks Serve's proxy for no image."""
    model = demo_assets.models["sd15"]
    async with EngineClient(cluster, token=ENGINE_TOKEN, inline_images=True) as inline, \
            EngineClient(cluster, token=ENGINE_TOKEN) as plain:  # fmt: skip
        paths: list[str] = []
        request = inline._request

        async def recorded(method: str, path: str, **kwargs: Any) -> Any:
            paths.append(path)
            return await request(method, path, **kwargs)

        inline._request = recorded  # type: ignore[method-assign]
        job = Recipe(model=model, prompt="a lighthouse", steps=2, seed=5, width=256, height=256, count=2)
        images = await inline.run("inline-images", job)
        assert paths == ["/jobs"]  # the submit only: no /jobs/<id>/images/<n>
        assert images == [await plain.image("inline-images", n) for n in range(2)]
        assert len(images) == 2 and all(image.startswith(b"\x89PNG") for image in images)
        # A client that did not ask reads the same stream without image frames (as before).
        assert [e["type"] for e in [e async for e in plain.events("inline-images")]][-1] == "done"


async def test_cancel_reaches_a_running_job_at_its_next_step(cluster: str, demo_assets: Any) -> None:
    model = demo_assets.models["sd15"]
    async with EngineClient(cluster, token=ENGINE_TOKEN) as client:
        await client.submit("cancel-me", recipe(model, steps=100))  # 10 s if not stopped
        events = client.events("cancel-me")
        async for event in events:
            if event["type"] == "progress":
                break
        asked = time.monotonic()
        await client.cancel("cancel-me")
        with pytest.raises(EngineError) as ended:
            async for event in events:
                if event["type"] == "failed":
                    raise EngineError.from_json(event)
        assert ended.value.code is ErrorCode.CANCELLED
        assert (await client.status("cancel-me")).state == "cancelled"
        # The replica stopped it (it would otherwise hold its model's replica for 10 s): the
        # next job for the same model runs at once.
        await client.run("after-cancel", recipe(model, steps=2))
        assert time.monotonic() - asked < 4.0


async def test_a_queued_job_reports_its_place_in_its_replica_s_queue(cluster: str, demo_assets: Any) -> None:
    """Three jobs for one model share its replica: the third waits behind the running one and the second."""
    model = demo_assets.models["sd15"]
    ids = ["place-0", "place-1", "place-2"]
    async with EngineClient(cluster, token=ENGINE_TOKEN) as client:
        # Different steps: the replica's queue would batch identical shapes into one call.
        for index, job_id in enumerate(ids):
            await client.submit(job_id, recipe(model, steps=100 + index, seed=index))  # 10 s each

        async def placed() -> bool:
            states = [await client.status(job_id) for job_id in ids]
            return states[0].state == "running" and states[2].position == 2

        await until(placed, 30)
        states = [await client.status(job_id) for job_id in ids]
        assert [(s.state, s.position) for s in states] == [("running", 0), ("queued", 1), ("queued", 2)]
        for job_id in ids:
            await client.cancel(job_id)
        await until(lambda: _all_finished(client, ids), 20)


async def _all_finished(client: EngineClient, ids: list[str]) -> bool:
    return all(state in ("cancelled", "done") for state in [(await client.status(j)).state for j in ids])


async def test_a_replica_killed_mid_job_gives_one_retry_and_one_post(
    cluster: str, demo_assets: Any, tmp_path: Path
) -> None:
    async with DiscordDouble() as double:
        guild = double.add_guild("Studio")
        channel = double.add_channel(guild, "studio")
        alice = double.add_member(guild, "alice")
        admin = double.add_member(guild, "admin", permissions=MANAGE_GUILD)
        db = tmp_path / "atelier.sqlite3"
        async with await Registry.open(db) as registry, EngineClient(cluster, token=ENGINE_TOKEN) as engine:
            await seed_registry(registry, guild.id, engine, demo_assets, guild.owner_id)
        log = tmp_path / "bot.log"
        bot = spawn_bot(double, tmp_path, cluster, log=log, ATELIER_ENGINE_BACKEND="ray",
                        ATELIER_STATUS_INTERVAL="0.3", ATELIER_RETRY_WAIT="60")  # fmt: skip
        try:
            await wait_commands(double)
            handle = await double.slash(alice, channel, "imagine", {**FAST, "prompt": "kill", "steps": 40, "seed": 77})
            await handle.wait_followup(within=30)
            await handle.wait_until(
                lambda: "Generating" in (handle.original.content if handle.original else ""), 30, "progress"
            )
            busy = [r for r in (await health(cluster))["cluster"]["replicas"] if r["load"] > 0]
            assert len(busy) == 1, busy
            os.kill(busy[0]["pid"], signal.SIGKILL)
            async def posted() -> bool:
                return any(is_result(m) for m in double.messages(channel))

            await until(posted, 60)
            await asyncio.sleep(1.5)  # time for a duplicate to show, if there were one
            results = [m for m in double.messages(channel) if is_result(m)]
            assert len(results) == 1, [m.content for m in double.messages(channel)]
            assert "Seed: 77" in png_parameters(results[0].attachments[0].data)
            # The admins' /queue lists the cluster's replicas, with the models they hold.
            ask = await double.slash(admin, channel, "queue", {})
            reply = await ask.wait_followup()
            view = reply.content + " ".join(str(e) for e in reply.embeds)
            assert "Ray Serve cluster" in view and "replica 1:" in view, view
            assert demo_assets.models["sd15"] in view and "job(s) in the last minute" in view, view
        finally:
            end_process(bot)
        async with await Registry.open(db) as registry:
            jobs = await JobStore(registry.database).recent_speeds(limit=5)
        assert [(job.state, job.attempts, job.losses) for job in jobs] == [(JobState.DONE, 2, 1)]
        # Ray put a new replica in the dead one's place.
        await until(lambda: replicas_running(cluster, 2), 60, every=0.5)
        assert (await health(cluster))["cluster"]["running_replicas"] == 2


async def test_a_bot_killed_with_jobs_on_the_cluster_loses_none_and_runs_none_twice(
    cluster: str, demo_assets: Any, tmp_path: Path
) -> None:
    async with DiscordDouble() as double:
        guild = double.add_guild("Studio")
        channel = double.add_channel(guild, "studio")
        members = [double.add_member(guild, name) for name in ("alice", "bob", "carol")]
        db = tmp_path / "atelier.sqlite3"
        async with await Registry.open(db) as registry, EngineClient(cluster, token=ENGINE_TOKEN) as engine:
            await seed_registry(registry, guild.id, engine, demo_assets, guild.owner_id)
            await registry.settings.update(guild.id, guild.owner_id, queue_limit_per_user=5)
        log = tmp_path / "bot.log"
        env = {"ATELIER_ENGINE_BACKEND": "ray", "ATELIER_STATUS_INTERVAL": "0.3"}
        first = spawn_bot(double, tmp_path, cluster, log=log, **env)
        second = None
        try:
            await wait_commands(double)
            handles = []
            for index in range(6):
                handles.append(await double.slash(
                    members[index % 3], channel, "imagine",
                    {**FAST, "prompt": f"job {index}", "steps": 20, "seed": 200 + index},
                ))  # fmt: skip
            for handle in handles:
                await handle.wait_followup(within=30)
            await handles[0].wait_until(
                lambda: "Generating" in (handles[0].original.content if handles[0].original else ""), 30, "progress"
            )
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            second = spawn_bot(double, tmp_path, cluster, log=log, **env)
            async def all_posted() -> bool:
                return len([m for m in double.messages(channel) if is_result(m)]) >= 6

            await until(all_posted, 90)
            await asyncio.sleep(1.5)
            results = [m for m in double.messages(channel) if is_result(m)]
            seeds = sorted(int(png_parameters(m.attachments[0].data).split("Seed: ")[1].split(",")[0]) for m in results)
            assert seeds == [200, 201, 202, 203, 204, 205], seeds
        finally:
            end_process(first)
            if second is not None:
                end_process(second)
        async with await Registry.open(db) as registry:
            assert await JobStore(registry.database).open_jobs() == []
        assert "Traceback" not in log.read_text()


async def test_the_cluster_scales_from_one_replica_to_two_under_load_and_the_bot_uses_both(
    ray_port: int, demo_assets: Any, tmp_path: Path
) -> None:
    args = cluster_args(tmp_path, models=str(demo_assets.model_root), loras=str(demo_assets.lora_root),
                        token=ENGINE_TOKEN, min_replicas=1, max_replicas=2, upscale_delay_s=1.0)  # fmt: skip
    url = deploy(args, ray_port)
    await until(lambda: replicas_running(url, 1), 60, every=0.5)
    async with EngineClient(url, token=ENGINE_TOKEN) as client:
        pool = EnginePool([EngineLink(client, cluster=True)], depth=2)
        slot = pool.slots[0]
        assert await pool.check(slot)
        assert pool.units_of(slot) == 2  # one replica, two jobs each
        model = demo_assets.models["sd15"]
        runs = [asyncio.create_task(client.run(f"load-{i}", recipe(model, steps=30, seed=i))) for i in range(8)]
        try:
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline:
                await pool.check(slot)
                if pool.units_of(slot) == 4:
                    break
                await asyncio.sleep(0.5)
            assert pool.units_of(slot) == 4  # two replicas: the bot hands it twice as many jobs
            await asyncio.wait_for(asyncio.gather(*runs), 90)
        finally:
            for run in runs:
                run.cancel()
        report = await health(url)
        assert len([r for r in report["cluster"]["replicas"] if r["jobs_per_minute"] > 0]) == 2


async def test_the_ingress_refuses_a_caller_without_the_token(cluster: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{cluster}/health") as response:
            assert await response.json() == {"status": "ok"}
        async with session.get(f"{cluster}/files", params={"kind": "model"}) as response:
            assert response.status == 401
    async with EngineClient(cluster, token=ENGINE_TOKEN) as client:
        files = await client.list_files("model")
        assert files  # the shared model folder, listed by the ingress


async def test_the_real_tiny_engine_runs_on_a_replica_and_serve_evicts_from_its_model_cache(
    ray_port: int, demo_assets: Any, tmp_path: Path
) -> None:
    """The replica runs the real generator; holding one model, Serve's eviction of the first
    model (for the second) empties it from the generator's own model cache."""
    from ray import serve

    args = cluster_args(tmp_path, models=str(demo_assets.model_root), loras=str(demo_assets.lora_root),
                        token=ENGINE_TOKEN, min_replicas=1, max_replicas=1, models_per_replica=1,
                        cpus_per_replica=0.5, runner="generator", device="cpu", dtype="float32",
                        heartbeat_interval_s=5.0)  # fmt: skip
    url = deploy(args, ray_port)
    sd15, sdxl = demo_assets.models["sd15"], demo_assets.models["sdxl"]
    async with EngineClient(url, token=ENGINE_TOKEN) as client:
        await client.wait_ready(60)
        lora = demo_assets.lora("watercolor")
        job = Recipe(model=sd15, prompt="a lighthouse", steps=2, seed=5, width=64, height=64,
                     loras=(LoraRef(lora.file, 0.8),))  # fmt: skip
        (image,) = await asyncio.wait_for(client.run("real-sd15", job), 120)
        text = png_parameters(image)
        assert "Seed: 5" in text and "Size: 64x64" in text
        # Image-to-image (issue 20): the ingress holds the input and hands it to the replica.
        digest = await client.put_input(image)
        (varied,) = await asyncio.wait_for(client.run("real-sd15-img2img", replace(job, init_image=digest, strength=0.5)), 120)
        assert "Denoising strength: 0.5" in png_parameters(varied)
        with pytest.raises(EngineError, match="has not been sent"):
            await client.submit("real-sd15-missing", replace(job, init_image="ab" * 32))
        # The ingress validates first: SD 1.5 reads no reference pictures (an edit model's), sent or not.
        with pytest.raises(EngineError, match="one input picture and no reference pictures"):
            await client.submit("real-sd15-reference", replace(job, init_image=digest, references=("cd" * 32,)))
        replica = serve.get_deployment_handle("EngineReplica", app_name="atelier")
        held = [m["file"] for m in (await replica.health.remote())["runner"]["models"]]
        assert held == [sd15]
        await asyncio.wait_for(client.run("real-sdxl", recipe(sdxl, steps=2, seed=6)), 120)
        held = [m["file"] for m in (await replica.health.remote())["runner"]["models"]]
        assert held == [sdxl]  # Serve dropped sd15 (one model per replica): so did the cache
