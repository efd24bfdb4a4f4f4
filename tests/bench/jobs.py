"""Job-path benchmark: ``python -m tests.bench.jobs`` prints one JSON object.

Everything goes through the Discord double with its rate limits on (per-route buckets, 5 per
5 s per channel, token buckets, the global 50/s) and, except for the affinity figure, through
the real ``python -m bot`` in its own process, as in production:

- ``ack_p50_ms``, ``ack_p99_ms``, ``missed_deadlines``: 500 ``/imagine`` interactions sent
  within ~2.5 s over 5 channels of 2 servers; the time from the double dispatching each
  interaction to the bot's deferral, as the double saw it. Targets p99 <= 250, missed 0.
- ``gpu_busy_fraction``: the same 500 jobs on a stand-in engine that takes a fixed 0.5 s per
  job (:mod:`tests.standin_engine`, the real engine API; a GPU is not needed to measure
  whether the bot keeps one busy): engine busy time over the wall time from the first job's
  start to the last one's end. Target >= 0.95.
- ``lost_jobs``, ``duplicate_posts``: 50 jobs in flight (some done, one running, the rest
  queued), the bot killed with SIGKILL and started again on the same database; jobs that
  ended in neither an image nor a message, and images posted more than once. Targets 0, 0.
- ``fair_wait_jobs``: server A with 400 queued jobs (40 members), then server B's one job;
  how many jobs start on the engine between B's job being queued and its start. Target <= 2.
- ``affinity_speedup``: 48 jobs from 6 members of one server, 4 models x 3 LoRA stacks,
  interleaved, on the real tiny-model engine with a model budget that holds 2 of the 4 models
  (as a GPU holds 2 of 4 SDXL or FLUX checkpoints; a switch to a third is a real load from disk): the
  engine time from the first job's submission to the last job's images, without affinity
  (the bot's plain order, first in first out) over with it. Target >= 1.3.

The machine's load average is reported with the figures: these machines are shared.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The real engine needs a shared secret; the bot processes read the same one from the environment.
ENGINE_TOKEN = os.environ.setdefault("ATELIER_ENGINE_TOKEN", "atelier-bench-jobs-token-9d41e7")

ACK_JOBS = 500
CHANNELS = (3, 2)  # channels in server A and server B
MEMBERS_PER_SERVER = 50
STANDIN_S = 0.5
KILL_JOBS = 50
KILL_STANDIN_S = 0.25
FAIR_A_JOBS = 400
FAIR_MEMBERS = 40
AFFINITY_JOBS = 48
AFFINITY_MODELS = 4
TARGETS = {
    "ack_p99_ms": "<= 250",
    "missed_deadlines": "0",
    "lost_jobs": "0",
    "duplicate_posts": "0",
    "gpu_busy_fraction": ">= 0.95",
    "affinity_speedup": ">= 1.3",
    "fair_wait_jobs": "<= 2",
}


def _say(text: str) -> None:
    print(f"[bench.jobs] {text}", file=sys.stderr, flush=True)


async def _until(condition: Callable[[], bool], within: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {within:.0f} s")
        await asyncio.sleep(every)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- assets and the real engine ----------------------------------------------------------------


def build_models(folder: Path) -> Path:
    """4 tiny SD 1.5 models with different weights (a switch is a real load) and the demo LoRAs."""
    script = (
        "import sys, shutil\n"
        "from pathlib import Path\n"
        "from sandbox.model_builder import build_demo_assets, config_sidecar\n"
        "out = Path(sys.argv[1]); models = out / 'all-models'; models.mkdir(parents=True, exist_ok=True)\n"
        f"for i in range({AFFINITY_MODELS}):\n"
        "    a = build_demo_assets(out / f'build-{i}', architectures=('sd15',), seed=i, with_loras=i == 0)\n"
        "    src = a.model_root / a.models['sd15']; dst = models / f'model-{i}.safetensors'\n"
        "    shutil.copy(src, dst); shutil.copytree(config_sidecar(src), config_sidecar(dst), dirs_exist_ok=True)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(folder)], check=True, capture_output=True)
    return folder


async def start_engine(
    models: Path, loras: Path, log: Path, extra_args: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    from engine.client import EngineClient

    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as sink:
        proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, waited for below
            [sys.executable, "-m", "engine", "serve", "--models", str(models), "--loras", str(loras),
             "--host", "127.0.0.1", "--port", str(port), *extra_args],
            stdout=sink, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    async with EngineClient(url, token=ENGINE_TOKEN) as client:
        await client.wait_ready(180)
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def seed(registry: Any, guild_id: int, owner: int, engine_url: str, loras: Path, *, models: int = 1) -> None:
    from bot.registry import LoraEntry, ModelEntry
    from engine.client import EngineClient

    async with EngineClient(engine_url, token=ENGINE_TOKEN) as client:
        for i in range(models):
            info = await client.inspect("model", f"model-{i}.safetensors")
            await registry.models.add(
                guild_id,
                ModelEntry.from_file_info(info, name=f"m{i}", default_steps=1, default_width=256, default_height=256),
                owner,
            )
        for name in ("watercolor", "pixel-art"):
            file = next(p.relative_to(loras).as_posix() for p in loras.rglob(f"{name}.safetensors"))  # noqa: ASYNC240
            info = await client.inspect("lora", file)
            await registry.loras.add(guild_id, LoraEntry.from_file_info(info, name=name), owner)
    await registry.settings.update(
        guild_id, owner, default_model="m0", queue_limit_per_user=20, server_queue_limit=1000
    )


# -- one world: a double, servers, members, a registry, a bot process ---------------------------


class World:
    def __init__(self, root: Path, engine_url: str, loras: Path, channels: tuple[int, ...], members: int) -> None:
        self.root, self.engine_url, self.loras = root, engine_url, loras
        self.channel_counts, self.member_count = channels, members

    async def __aenter__(self) -> World:
        from bot.registry import Registry
        from sandbox.discord_double import DiscordDouble

        self.double = await DiscordDouble().__aenter__()
        self.guilds = [self.double.add_guild(f"Server {'AB'[i]}") for i in range(len(self.channel_counts))]
        self.channels = {
            g.id: [self.double.add_channel(g, f"art-{c}") for c in range(n)]
            for g, n in zip(self.guilds, self.channel_counts, strict=True)
        }
        self.members = {g.id: [self.double.add_member(g, f"{g.name[-1]}{m}") for m in range(self.member_count)] for g in self.guilds}
        self.root.mkdir(parents=True, exist_ok=True)
        async with await Registry.open(self.root / "atelier.sqlite3") as registry:
            for guild in self.guilds:
                await seed(registry, guild.id, guild.owner_id, self.engine_url, self.loras)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.double.close()

    def all_channels(self) -> list[Any]:
        return [c for g in self.guilds for c in self.channels[g.id]]

    def results(self) -> list[Any]:
        return [m for c in self.all_channels() for m in self.double.messages(c) if m.attachments and not m.ephemeral]

    async def start_bot(self, engine_urls: str) -> subprocess.Popen[bytes]:
        from tests.bot_process import spawn_bot

        proc = spawn_bot(self.double, self.root, engine_urls, log=self.root / "bot.log")
        await self.double.wait_until_connected(90)
        await _until(lambda: bool(self.double.registered_commands()), 60, "command sync")
        return proc

    async def open_jobs(self) -> list[Any]:
        from bot.jobs import JobStore
        from bot.registry import Registry

        async with await Registry.open(self.root / "atelier.sqlite3") as registry:
            return await JobStore(registry.database).open_jobs()

    async def job_rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        from bot.registry import Registry

        async with await Registry.open(self.root / "atelier.sqlite3") as registry:
            return await registry.database.fetch_all(sql, params)


def seed_of(message: Any) -> int:
    return int(next(f["value"] for f in message.embeds[0]["fields"] if f["name"] == "Seed"))


# -- the phases ---------------------------------------------------------------------------------


async def phase_ack_and_busy(root: Path, engine_url: str, loras: Path) -> dict[str, Any]:
    from tests.bot_process import end_process
    from tests.standin_engine import StandinEngine

    standin = StandinEngine(STANDIN_S)
    await standin.start()
    async with World(root, engine_url, loras, CHANNELS, MEMBERS_PER_SERVER) as world:
        bot = await world.start_bot(standin.url)
        try:
            channels = world.all_channels()
            handles = []
            sent_at = time.monotonic()
            for index in range(ACK_JOBS):
                channel = channels[index % len(channels)]
                member = world.members[channel.guild.id][(index // len(channels)) % MEMBERS_PER_SERVER]
                handles.append(await world.double.slash(member, channel, "imagine", {"prompt": f"n{index}", "seed": index}))
                if index % 20 == 19:
                    await asyncio.sleep(0.1)
            sent_s = time.monotonic() - sent_at
            await asyncio.gather(*(h.wait_response(30) for h in handles), return_exceptions=True)
            acks = sorted((h.deferred_within if h.deferred_within is not None else 99.0) * 1000 for h in handles)
            _say(f"{ACK_JOBS} interactions sent in {sent_s:.1f} s; waiting for the images (~{ACK_JOBS * STANDIN_S:.0f} s)")
            await _until(lambda: len(world.results()) >= ACK_JOBS, ACK_JOBS * STANDIN_S * 2 + 120, "500 results", 1.0)
            await asyncio.sleep(2)
            results = world.results()
            seeds = [seed_of(m) for m in results]
            missed = [v for v in world.double.violations if v.kind == "interaction_deadline_missed"]
            other = [str(v) for v in world.double.violations if v.kind != "interaction_deadline_missed"]
            return {
                "ack_p50_ms": round(statistics.median(acks), 1),
                "ack_p99_ms": round(acks[int(len(acks) * 0.99) - 1], 1),
                "ack_max_ms": round(acks[-1], 1),
                "missed_deadlines": len(missed),
                "interactions_sent_in_s": round(sent_s, 2),
                "gpu_busy_fraction": round(standin.busy_fraction(), 4),
                "busy_run_s": round(standin.runs[-1][2] - standin.runs[0][1], 1) if standin.runs else 0,
                "busy_results_posted": len(results),
                "busy_duplicate_posts": len(seeds) - len(set(seeds)),
                "busy_engine_runs": len(standin.runs),
                "rate_limited_429s": dict(world.double.limiter.refused),
                "status_edits": len(world.double.requests_matching("PATCH /webhooks/*")),
                "channel_posts": len(world.double.requests_matching("POST /channels/*/messages")),
                "other_violations": other[:5],
            }
        finally:
            end_process(bot)
            await standin.close()


async def phase_kill(root: Path, engine_url: str, loras: Path) -> dict[str, Any]:
    from tests.bot_process import end_process
    from tests.standin_engine import StandinEngine

    standin = StandinEngine(KILL_STANDIN_S)
    await standin.start()
    async with World(root, engine_url, loras, (2, 1), 5) as world:
        bot = await world.start_bot(standin.url)
        second = None
        try:
            channels = world.all_channels()
            handles = []
            for index in range(KILL_JOBS):
                channel = channels[index % len(channels)]
                member = world.members[channel.guild.id][index % 5]
                handles.append(await world.double.slash(member, channel, "imagine", {"prompt": f"k{index}", "seed": 1000 + index}))
            await asyncio.gather(*(h.wait_followup(within=30) for h in handles))
            await _until(lambda: len(world.results()) >= 5, 60, "the first results")
            bot.send_signal(signal.SIGKILL)
            bot.wait(10)
            in_flight = KILL_JOBS - len(world.results())
            _say(f"bot killed with {in_flight} of {KILL_JOBS} jobs unfinished; starting it again")
            second = await world.start_bot(standin.url)
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if not await world.open_jobs():
                    break
                await asyncio.sleep(1.0)
            await asyncio.sleep(2)
            results = world.results()
            seeds = [seed_of(m) for m in results]
            failed = await world.job_rows("SELECT id FROM jobs WHERE state IN ('failed', 'cancelled') AND told = 1")
            unfinished = await world.open_jobs()
            lost = KILL_JOBS - len(set(seeds)) - len(failed)
            return {
                "lost_jobs": lost,
                "duplicate_posts": len(seeds) - len(set(seeds)),
                "kill_unfinished_at_kill": in_flight,
                "kill_failed_with_message": len(failed),
                "kill_still_open": len(unfinished),
                "kill_engine_runs": len(standin.runs),
                "kill_engine_submits": standin.submits,
            }
        finally:
            end_process(bot)
            if second is not None:
                end_process(second)
            await standin.close()


async def phase_fair(root: Path, engine_url: str, loras: Path) -> dict[str, Any]:
    from tests.bot_process import end_process
    from tests.standin_engine import StandinEngine

    standin = StandinEngine(STANDIN_S)
    await standin.start()
    async with World(root, engine_url, loras, (1, 1), FAIR_MEMBERS) as world:
        bot = await world.start_bot(standin.url)
        try:
            server_a, server_b = world.guilds
            (channel_a,), (channel_b,) = world.channels[server_a.id], world.channels[server_b.id]
            handles = []
            for index in range(FAIR_A_JOBS):
                member = world.members[server_a.id][index % FAIR_MEMBERS]
                handles.append(await world.double.slash(member, channel_a, "imagine", {"prompt": f"a{index}", "seed": index}))
                if index % 25 == 24:
                    await asyncio.sleep(0.5)
            await asyncio.gather(*(h.wait_followup(within=60) for h in handles))
            late = await world.double.slash(world.members[server_b.id][0], channel_b, "imagine", {"prompt": "b", "seed": 99999})
            reply = await late.wait_followup(within=30)
            if not reply.content.startswith("⏳"):
                raise RuntimeError(f"server B's job was not queued: {reply.content}")
            rows: list[Any] = []

            async def b_started() -> bool:
                rows[:] = await world.job_rows("SELECT id, created_at, attempts FROM jobs WHERE guild_id = ?", (server_b.id,))
                return bool(rows) and f"{rows[0]['id']}.{rows[0]['attempts']}" in standin.started_at

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not await b_started():  # noqa: ASYNC110 (another process)
                await asyncio.sleep(0.1)
            row = rows[0]
            started = standin.started_at[f"{row['id']}.{row['attempts']}"]
            return {
                "fair_wait_jobs": standin.started_between(row["created_at"], started),
                "fair_wait_s": round(started - row["created_at"], 2),
                "fair_a_queued": FAIR_A_JOBS - len(standin.runs),
            }
        finally:
            end_process(bot)
            await standin.close()


def affinity_budget(models: Path) -> tuple[str, ...]:
    """A model budget that holds 2 of the 4 models, as a GPU holds 2 of 4 SDXL or FLUX
    checkpoints. Every tiny model fits in the engine's default budget, and then switching
    models costs almost nothing and affinity measures nothing (1.05 here once the model cache
    landed, against 1.73 before). The tiny models load in float32, as their files are stored."""
    largest = max(path.stat().st_size for path in models.glob("model-*.safetensors"))
    return ("--model-device-budget", str(int(largest * 2.5)), "--model-host-budget", "0")


async def run_affinity_once(root: Path, models: Path, loras: Path, workload: list[tuple[int, str]], *, affinity: bool) -> float:
    from bot.assembly import build_bot
    from bot.operator.config import BotConfig
    from bot.registry import Registry
    from engine.client import EngineClient
    from sandbox.discord_double import DiscordDouble, run_bot

    proc, url = await start_engine(models, loras, root / "engine.log", affinity_budget(models))
    try:
        async with DiscordDouble() as double, await Registry.open(root / f"affinity-{affinity}.sqlite3") as registry:
            guild = double.add_guild("Studio")
            channels = [double.add_channel(guild, f"art-{c}") for c in range(3)]
            members = [double.add_member(guild, f"p{i}") for i in range(6)]
            await seed(registry, guild.id, guild.owner_id, url, loras, models=AFFINITY_MODELS)
            async with EngineClient(url, token=ENGINE_TOKEN) as engine:
                config = BotConfig(image_classifier="off", engine_batch=4 if affinity else 1)
                options = {} if affinity else {"affinity_window": 1}
                bot = build_bot(config, registry=registry, engines=[engine], guild_ready_timeout=0.1, **options)
                async with run_bot(bot, double):
                    handles = []
                    for index, (model, stack) in enumerate(workload):
                        opts: dict[str, Any] = {"prompt": f"w{index}", "model": f"m{model}", "seed": index}
                        if stack:
                            opts["lora1"] = "watercolor"
                            if stack == "two":
                                opts["lora2"] = "pixel-art"
                        handles.append(await double.slash(members[index % 6], channels[index % 3], "imagine", opts))
                    await asyncio.gather(*(h.wait_followup(within=60) for h in handles))
                    await _until(lambda: not bot.dispatcher.jobs, 900, "the affinity workload", 0.5)
            rows = await registry.database.fetch_all("SELECT submitted_at, posting_at, state FROM jobs")
            assert all(r["state"] == "done" for r in rows), [r["state"] for r in rows]
            return max(r["posting_at"] for r in rows) - min(r["submitted_at"] for r in rows)
    finally:
        stop(proc)


async def phase_affinity(root: Path, models: Path, loras: Path) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before any work)
    rng = random.Random(7)
    workload = [(rng.randrange(AFFINITY_MODELS), rng.choice(["", "one", "two"])) for _ in range(AFFINITY_JOBS)]
    fifo = await run_affinity_once(root, models, loras, workload, affinity=False)
    _say(f"first in first out: {fifo:.1f} s")
    with_affinity = await run_affinity_once(root, models, loras, workload, affinity=True)
    _say(f"with affinity: {with_affinity:.1f} s")
    return {
        "affinity_speedup": round(fifo / with_affinity, 3),
        "affinity_fifo_s": round(fifo, 1),
        "affinity_s": round(with_affinity, 1),
    }


async def main_async() -> dict[str, Any]:
    started = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        root = Path(tmp)
        _say("building 4 tiny SD 1.5 models and the demo LoRAs")
        build_models(root / "assets")
        models, loras = root / "assets" / "all-models", root / "assets" / "build-0" / "loras"
        engine, url = await start_engine(models, loras, root / "engine.log")  # for registering files
        results: dict[str, Any] = {}
        try:
            phases: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
                ("fairness", lambda: phase_fair(root / "fair", url, loras)),
                ("bot SIGKILL", lambda: phase_kill(root / "kill", url, loras)),
                ("500 interactions / GPU busy", lambda: phase_ack_and_busy(root / "busy", url, loras)),
            ]
            for name, phase in phases:
                _say(f"phase: {name}")
                results.update(await phase())
        finally:
            stop(engine)
        _say("phase: affinity (real tiny engine)")
        results.update(await phase_affinity(root / "affinity", models, loras))
        shutil.rmtree(root, ignore_errors=True)
    headline = ("ack_p50_ms", "ack_p99_ms", "missed_deadlines", "lost_jobs", "duplicate_posts",
                "gpu_busy_fraction", "affinity_speedup", "fair_wait_jobs")
    return {
        **{key: results[key] for key in headline},
        "targets": TARGETS,
        "details": {k: v for k, v in results.items() if k not in headline},
        "engine_for_gpu_busy": f"stand-in engine, fixed {STANDIN_S} s per job (tests/standin_engine.py)",
        "engine_for_affinity": "real engine process, tiny SD 1.5 models on the CPU",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "wall_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--quick" in args:  # a smoke run of every phase at a fraction of the size (not the figures)
        global ACK_JOBS, STANDIN_S, KILL_JOBS, FAIR_A_JOBS, FAIR_MEMBERS, AFFINITY_JOBS
        ACK_JOBS, STANDIN_S, KILL_JOBS, FAIR_A_JOBS, FAIR_MEMBERS, AFFINITY_JOBS = 60, 0.05, 20, 60, 10, 12
    results = asyncio.run(main_async())
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
