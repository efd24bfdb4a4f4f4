"""Cluster benchmark: ``python -m tests.bench.cluster`` prints one JSON object.

A local Ray on loopback, the Atelier Serve app (:mod:`engine.cluster`) on it, replicas that run
the engine's own queue in front of the stand-in runner (:mod:`tests.cluster_standin`: a fixed
time per job, a GPU is not needed to measure routing):

- ``throughput_ratio_2v1``: jobs per second with 2 replicas over 1 replica, the same 24 jobs
  (two models, interleaved) kept in flight as the bot keeps them (the cluster's capacity).
  Target >= 1.8.
- ``model_hit_rate``: 4 models over 2 replicas that hold 2 each, 64 interleaved jobs kept in
  flight at the cluster's capacity: jobs whose replica already held their model, over all.
  Target >= 0.9.
- ``routing_overhead_ms_p99``: a job's time through Serve (HTTP proxy, ingress, replica)
  against the same job on a direct engine (:mod:`engine.server` on the same JobManager and
  runner), one job at a time: the 99th percentile of (Serve time - the direct median).
  Target <= 20.
- ``lost_jobs``, ``duplicate_posts``: 30 jobs through the real ``python -m bot`` with
  ``ATELIER_ENGINE_BACKEND=ray``; a replica killed mid-job and the bot killed with SIGKILL,
  then started again. Targets 0 and 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ENGINE_TOKEN = os.environ.setdefault("ATELIER_ENGINE_TOKEN", "atelier-bench-cluster-token-5b1e")

JOB_S = 0.5
THROUGHPUT_JOBS = 24
HIT_JOBS = 64
OVERHEAD_JOBS = 60
KILL_JOBS = 30
TARGETS = {
    "throughput_ratio_2v1": ">= 1.8",
    "model_hit_rate": ">= 0.9",
    "routing_overhead_ms_p99": "<= 20",
    "lost_jobs": "0",
    "duplicate_posts": "0",
}


def _say(text: str) -> None:
    print(f"[bench.cluster] {text}", file=sys.stderr, flush=True)


def recipe(model: str, seed: int, steps: int = 10) -> Any:
    from engine.protocol import Recipe

    return Recipe(model=model, prompt=f"job {seed}", steps=steps, seed=seed, width=256, height=256)


async def wait_replicas(url: str, count: int, within: float = 90) -> None:
    from engine.client import EngineClient

    deadline = time.monotonic() + within
    async with EngineClient(url, token=ENGINE_TOKEN) as client:
        while True:
            health = await client.wait_ready(within)
            if health["cluster"]["running_replicas"] == count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster did not reach {count} replicas")
            await asyncio.sleep(0.5)


async def run_in_flight(url: str, jobs: list[tuple[str, Any]], in_flight: int) -> float:
    """Run ``jobs`` keeping ``in_flight`` of them submitted at once (as the bot does); seconds."""
    from engine.client import EngineClient

    gate = asyncio.Semaphore(in_flight)
    async with EngineClient(url, token=ENGINE_TOKEN) as client:

        async def one(job_id: str, job: Any) -> None:
            async with gate:
                await client.run(job_id, job)

        started = time.monotonic()
        await asyncio.gather(*(one(job_id, job) for job_id, job in jobs))
        return time.monotonic() - started


async def replica_counts(url: str) -> tuple[int, int]:
    from engine.client import EngineClient

    async with EngineClient(url, token=ENGINE_TOKEN) as client:
        replicas = (await client.health())["cluster"]["replicas"]
    return sum(r["model_hits"] for r in replicas), sum(r["model_misses"] for r in replicas)


def args_for(root: Path, models: Path, loras: Path, **overrides: Any) -> dict[str, Any]:
    from tests.cluster_ray import cluster_args

    steps = 10  # the jobs' steps here: JOB_S a job
    settings = {"runner_args": {"seconds_per_step": JOB_S / steps}, **overrides}
    return cluster_args(root, models=str(models), loras=str(loras), token=ENGINE_TOKEN, **settings)


async def phase_throughput(root: Path, port: int, models: list[str], folders: tuple[Path, Path]) -> dict[str, Any]:
    from tests.cluster_ray import deploy

    seconds = {}
    for replicas in (1, 2):
        url = deploy(args_for(root, *folders, min_replicas=replicas, max_replicas=replicas), port)
        await wait_replicas(url, replicas)
        jobs = [(f"tp{replicas}-{i}", recipe(models[i % 2], i)) for i in range(THROUGHPUT_JOBS)]
        seconds[replicas] = await run_in_flight(url, jobs, in_flight=2 * replicas)
        _say(f"{replicas} replica(s): {THROUGHPUT_JOBS} jobs in {seconds[replicas]:.2f} s")
    return {
        "throughput_ratio_2v1": round(seconds[1] / seconds[2], 3),
        "throughput_jobs_per_s": {"1": round(THROUGHPUT_JOBS / seconds[1], 3), "2": round(THROUGHPUT_JOBS / seconds[2], 3)},
    }


async def phase_hits(root: Path, port: int, models: list[str], folders: tuple[Path, Path]) -> dict[str, Any]:
    from tests.cluster_ray import deploy

    url = deploy(args_for(root, *folders, min_replicas=2, max_replicas=2, models_per_replica=2), port)
    await wait_replicas(url, 2)
    hits0, misses0 = await replica_counts(url)
    jobs = [(f"hit-{i}", recipe(models[i % 4], i, steps=2)) for i in range(HIT_JOBS)]
    await run_in_flight(url, jobs, in_flight=4)
    hits, misses = await replica_counts(url)
    hits, misses = hits - hits0, misses - misses0
    return {"model_hit_rate": round(hits / max(1, hits + misses), 3), "model_loads": misses}


async def phase_overhead(root: Path, port: int, models: list[str], folders: tuple[Path, Path]) -> dict[str, Any]:
    from aiohttp import web

    from engine.client import EngineClient
    from engine.jobs import JobManager
    from engine.server import create_app
    from tests.cluster_ray import deploy, free_port
    from tests.cluster_standin import StandinRunner

    steps, seconds_per_step = 4, 0.025
    url = deploy(args_for(root, *folders, min_replicas=1, max_replicas=1,
                          runner_args={"seconds_per_step": seconds_per_step}), port)  # fmt: skip
    await wait_replicas(url, 1)
    app = create_app(JobManager(StandinRunner(seconds_per_step=seconds_per_step)), models_root=folders[0],
                     loras_root=folders[1], token=ENGINE_TOKEN)  # fmt: skip
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    direct_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", direct_port).start()
    direct = f"http://127.0.0.1:{direct_port}"
    # Three ways, one job of each in turn (the machine's load drifts alike for all three): the
    # direct engine, Serve as the bot uses it (images on the event stream), and Serve with a
    # request per image (the protocol before, for comparison).
    ways = {"direct": (direct, False), "serve": (url, True), "serve_image_requests": (url, False)}
    times: dict[str, list[float]] = {name: [] for name in ways}
    try:
        async with contextlib.AsyncExitStack() as stack:
            clients = {name: await stack.enter_async_context(EngineClient(base, token=ENGINE_TOKEN, inline_images=inline))
                       for name, (base, inline) in ways.items()}  # fmt: skip
            for name, client in clients.items():
                await client.run(f"warm-{name}", recipe(models[0], 0, steps=steps))
            for i in range(OVERHEAD_JOBS):
                for name, client in clients.items():
                    started = time.perf_counter()
                    await client.run(f"{name}-{i}", recipe(models[0], i, steps=steps))
                    times[name].append(time.perf_counter() - started)
        hops = {name: await _hops(base, inline, models[0], steps, name) for name, (base, inline) in ways.items()}
    finally:
        await runner.cleanup()
    base = statistics.median(times["direct"])

    def extra(name: str) -> list[float]:
        return sorted((t - base) * 1000 for t in times[name])

    def p99(values: list[float]) -> float:
        return round(values[max(0, int(len(values) * 0.99) - 1)], 1)

    return {
        "routing_overhead_ms_p99": p99(extra("serve")),
        "routing_overhead_ms_p50": round(statistics.median(extra("serve")), 1),
        "routing_overhead_ms_p99_image_requests": p99(extra("serve_image_requests")),
        "routing_overhead_ms_p50_image_requests": round(statistics.median(extra("serve_image_requests")), 1),
        "direct_job_ms_p50": round(base * 1000, 1),
        "direct_job_ms_p99": p99(sorted(t * 1000 for t in times["direct"])),
        "serve_job_ms_p50": round(statistics.median(times["serve"]) * 1000, 1),
        "hops_ms_p50": hops,
    }


async def _hops(base: str, inline: bool, model: str, steps: int, name: str) -> dict[str, float]:
    """Where a job's time goes, per request the bot makes (medians in ms): to say which hop costs."""
    from engine.client import EngineClient

    parts: dict[str, list[float]] = {"status_round_trip": [], "submit": [], "events_to_done": [], "images": []}
    async with EngineClient(base, token=ENGINE_TOKEN, inline_images=inline) as client:
        for i in range(OVERHEAD_JOBS // 2):
            job_id = f"hops-{name}-{i}"
            t0 = time.perf_counter()
            await client.submit(job_id, recipe(model, i, steps=steps))
            t1 = time.perf_counter()
            count = 0
            async for event in client.events(job_id):
                if event["type"] == "done":
                    count = int(event["images"])
            t2 = time.perf_counter()
            for n in range(count):
                await client.image(job_id, n)
            t3 = time.perf_counter()
            await client.status(job_id)
            t4 = time.perf_counter()
            for key, seconds in zip(parts, (t4 - t3, t1 - t0, t2 - t1, t3 - t2), strict=True):
                parts[key].append(seconds * 1000)
    return {key: round(statistics.median(values), 2) for key, values in parts.items()}


async def phase_kills(root: Path, port: int, demo: Any) -> dict[str, Any]:
    from bot.jobs import JobStore
    from bot.registry import Registry
    from engine.client import EngineClient
    from sandbox.discord_double import DiscordDouble
    from tests.bench.jobs import _until
    from tests.bot.conftest import FAST, png_parameters, seed_registry
    from tests.bot_process import end_process, spawn_bot
    from tests.cluster_ray import deploy

    url = deploy(args_for(root, demo.model_root, demo.lora_root, min_replicas=2, max_replicas=2), port)
    await wait_replicas(url, 2)
    data = root / "bot"
    data.mkdir(parents=True, exist_ok=True)
    async with DiscordDouble() as double:
        guild = double.add_guild("Studio")
        channels = [double.add_channel(guild, f"art-{i}") for i in range(2)]
        members = [double.add_member(guild, f"m{i}") for i in range(5)]
        async with await Registry.open(data / "atelier.sqlite3") as registry, EngineClient(url, token=ENGINE_TOKEN) as engine:
            await seed_registry(registry, guild.id, engine, demo, guild.owner_id)
            await registry.settings.update(guild.id, guild.owner_id, queue_limit_per_user=20, server_queue_limit=1000)

        def results() -> list[Any]:
            return [m for c in channels for m in double.messages(c) if m.attachments and not m.ephemeral]

        # The token named here: importing the tests' fixtures sets the tests' own in os.environ.
        env = {"ATELIER_ENGINE_BACKEND": "ray", "ATELIER_ENGINE_TOKEN": ENGINE_TOKEN,
               "ATELIER_STATUS_INTERVAL": "0.5", "ATELIER_RETRY_WAIT": "120"}  # fmt: skip
        log = data / "bot.log"
        bot = spawn_bot(double, data, url, log=log, **env)
        second = None
        try:
            await double.wait_until_connected(90)
            await _until(lambda: bool(double.registered_commands()), 60, "command sync")
            handles = []
            for index in range(KILL_JOBS):
                options = {**FAST, "prompt": f"k{index}", "steps": 10, "seed": 1000 + index}
                handles.append(await double.slash(members[index % 5], channels[index % 2], "imagine", options))
            await asyncio.gather(*(h.wait_followup(within=60) for h in handles))
            await _until(lambda: len(results()) >= 4, 120, "the first results")
            async with EngineClient(url, token=ENGINE_TOKEN) as engine:
                busy = [r for r in (await engine.health())["cluster"]["replicas"] if r["load"] > 0]
            if busy:
                os.kill(busy[0]["pid"], signal.SIGKILL)
            await asyncio.sleep(0.3)
            bot.send_signal(signal.SIGKILL)
            bot.wait(10)
            in_flight = KILL_JOBS - len(results())
            _say(f"replica and bot killed with {in_flight} of {KILL_JOBS} jobs unfinished; starting the bot again")
            second = spawn_bot(double, data, url, log=log, **env)
            deadline = time.monotonic() + 240
            async with await Registry.open(data / "atelier.sqlite3") as registry:
                store = JobStore(registry.database)
                while time.monotonic() < deadline and await store.open_jobs():  # noqa: ASYNC110
                    await asyncio.sleep(1.0)
                await asyncio.sleep(2)
                failed = await registry.database.fetch_all(
                    "SELECT id FROM jobs WHERE state IN ('failed', 'cancelled') AND told = 1"
                )
                still_open = len(await store.open_jobs())
            seeds = [int(png_parameters(m.attachments[0].data).split("Seed: ")[1].split(",")[0]) for m in results()]
            return {
                "lost_jobs": KILL_JOBS - len(set(seeds)) - len(failed),
                "duplicate_posts": len(seeds) - len(set(seeds)),
                "kill_unfinished_at_kill": in_flight,
                "kill_failed_with_message": len(failed),
                "kill_still_open": still_open,
                "kill_replica_killed": bool(busy),
            }
        except BaseException:
            _say("the bot's log:\n" + log.read_text()[-3000:])
            raise
        finally:
            end_process(bot)
            if second is not None:
                end_process(second)


async def main_async(only: str | None = None) -> dict[str, Any]:
    from sandbox.model_builder import build_demo_assets
    from tests.cluster_ray import free_port, local_ray

    started = time.monotonic()
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        root = Path(tmp)
        _say("building the tiny demo models (registered by the bot in the kill phase)")
        demo = build_demo_assets(root / "assets", size="tiny")
        folders = (demo.model_root, demo.lora_root)
        models = [f"model-{i}.safetensors" for i in range(4)]  # the stand-in reads no file
        with local_ray():
            port = free_port()
            for name, phase in (
                ("throughput 2 v 1", lambda: phase_throughput(root / "tp", port, models, folders)),
                ("model hit rate", lambda: phase_hits(root / "hits", port, models, folders)),
                ("routing overhead", lambda: phase_overhead(root / "overhead", port, models, folders)),
                ("replica kill and bot kill", lambda: phase_kills(root / "kill", port, demo)),
            ):
                if only is not None and only not in name:
                    continue
                _say(f"phase: {name}")
                results.update(await phase())
    headline = tuple(key for key in TARGETS if key in results)
    return {
        **{key: results[key] for key in headline},
        "targets": TARGETS,
        "details": {k: v for k, v in results.items() if k not in headline},
        "engine": f"stand-in runner, {JOB_S} s per job, in the engine's JobManager on each replica",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "wall_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--quick" in args:  # a smoke run of every phase at a fraction of the size (not the figures)
        global THROUGHPUT_JOBS, HIT_JOBS, OVERHEAD_JOBS, KILL_JOBS, JOB_S
        THROUGHPUT_JOBS, HIT_JOBS, OVERHEAD_JOBS, KILL_JOBS, JOB_S = 8, 16, 10, 10, 0.2
    if "--direct-ingress" in args:
        # Ray's experimental direct ingress: the bench talks to the ingress replica's own port
        # (tests.cluster_ray.deploy finds it), past Serve's HTTP proxy. Read by Ray's processes
        # at start, which inherit this environment.
        os.environ.update({"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": "30500",
                           "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": "30600"})  # fmt: skip
    # ``--only overhead`` (any word of a phase's name) runs that phase alone.
    only = args[args.index("--only") + 1] if "--only" in args else None
    results = asyncio.run(main_async(only))
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
