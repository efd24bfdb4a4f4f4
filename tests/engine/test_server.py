"""The HTTP API end to end: real tiny models, the real generator, the real client.

Each test talks HTTP to the aiohttp app through :class:`engine.client.EngineClient` (or raw
aiohttp where the wire format itself is under test). The last tests start
``python -m engine serve`` as a real process.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from PIL import Image

from engine.client import DEFAULT_EVENT_TIMEOUT_S, EngineClient
from engine.config import parse_serve_args, parse_size
from engine.inspect import inspect_file
from engine.jobs import JobManager
from engine.protocol import EngineError, ErrorCode, LoraRef, Recipe
from engine.server import HEARTBEAT_INTERVAL_S, create_app
from tests.conftest import ENGINE_TOKEN

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def generator(demo_assets):
    from engine.generate import Generator

    return Generator(demo_assets.model_root, demo_assets.lora_root, device="cpu", dtype="float32")


@pytest.fixture
async def engine(demo_assets, generator) -> AsyncIterator[tuple[EngineClient, str]]:
    manager = JobManager(generator)
    app = create_app(manager, models_root=demo_assets.model_root, loras_root=demo_assets.lora_root)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    client = EngineClient(base)
    client.manager = manager  # type: ignore[attr-defined]  # lets tests look inside
    try:
        yield client, base
    finally:
        await client.close()
        await server.close()


def tiny_recipe(demo_assets, **changes: Any) -> Recipe:
    values: dict[str, Any] = {
        "model": demo_assets.models["sd15"],
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "blurry",
        "sampler": "Euler",
        "steps": 2,
        "cfg_scale": 5.0,
        "seed": 42,
        "width": 64,
        "height": 64,
        **changes,
    }
    return Recipe(**values)


async def raw(base: str, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, base + path, **kwargs) as response:
            body = await response.read()
            try:
                return response.status, json.loads(body)
            except ValueError:
                return response.status, body


async def test_a_job_runs_end_to_end_with_a_lora_and_the_png_carries_its_recipe(
    engine, demo_assets
) -> None:
    client, _ = engine
    lora = demo_assets.lora("watercolor")
    recipe = tiny_recipe(demo_assets, loras=(LoraRef(lora.file, 0.8, name="watercolor"),), count=2)
    events: list[dict[str, Any]] = []
    images = await client.run("e2e-1", recipe, on_event=events.append)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["queued", "started"] and kinds[-1] == "done"
    progress = [e for e in events if e["type"] == "progress"]
    # the two images run in one batched call: 2 image-steps per denoising step
    assert [e["step"] for e in progress] == [2, 4] and progress[-1]["total"] == 4
    done = events[-1]
    assert done["timings"]["batch_images"] == 2 and done["timings"]["lora_path"] in ("patched", "unfused")
    assert isinstance(done["timings"]["lora_path_reason"], str)
    assert len(images) == 2 and images[0] != images[1]  # seeds 42 and 43
    picture = Image.open(io.BytesIO(images[0]))
    assert picture.format == "PNG" and picture.size == (64, 64)
    parameters = picture.info["parameters"]
    assert parameters.startswith("a lighthouse at dusk")
    assert "Negative prompt: blurry" in parameters
    assert "Steps: 2" in parameters and "Seed: 42" in parameters
    assert "watercolor" in parameters
    status = await client.status("e2e-1")
    assert (status.state, status.images, status.step, status.total_steps) == ("done", 2, 4, 4)


async def test_the_same_id_twice_runs_once(engine, demo_assets) -> None:
    client, base = engine
    body = {"id": "twice", "recipe": tiny_recipe(demo_assets).to_json()}
    first_status, first = await raw(base, "POST", "/jobs", json=body)
    second_status, second = await raw(base, "POST", "/jobs", json=body)
    assert (first_status, second_status) == (202, 200)
    assert first["id"] == second["id"] == "twice"
    events = [e async for e in client.events("twice")]
    assert [e["type"] for e in events].count("started") == 1
    health = await client.health()
    assert health["queue"]["completed"] == 1
    after_status, after = await raw(base, "POST", "/jobs", json=body)
    assert (after_status, after["state"]) == (200, "done")
    assert (await client.health())["queue"]["completed"] == 1


async def test_cancel_stops_a_running_job_long_before_its_last_step(engine, demo_assets) -> None:
    client, _ = engine
    recipe = tiny_recipe(demo_assets, steps=150, width=128, height=128)
    await client.submit("to-cancel", recipe)
    cancelled_at: int | None = None
    last_step = 0
    async for event in client.events("to-cancel"):
        if event["type"] == "progress":
            last_step = event["step"]
            if cancelled_at is None:
                cancelled_at = (await client.cancel("to-cancel")).step
        final = event
    assert final["type"] == "failed" and final["error"]["code"] == "cancelled"
    assert cancelled_at is not None and last_step < 150
    status = await client.status("to-cancel")
    assert status.state == "cancelled" and status.images == 0
    with pytest.raises(EngineError) as caught:
        await client.image("to-cancel", 0)
    assert caught.value.code is ErrorCode.UNKNOWN_JOB


async def test_failures_come_back_as_coded_events(engine, demo_assets) -> None:
    client, _ = engine
    foreign = demo_assets.lora("flux-only")
    cases = {
        "missing-model": (tiny_recipe(demo_assets, model="nope.safetensors"), {"unknown_file"}),
        "flux-lora": (
            tiny_recipe(demo_assets, loras=(LoraRef(foreign.file, 1.0),)),
            {"arch_mismatch"},  # its header says FLUX: refused before loading, naming both
        ),
        "xl-lora-on-sd15": (
            tiny_recipe(demo_assets, loras=(LoraRef(demo_assets.lora("pixel-art-xl").file, 1.0),)),
            {"arch_mismatch"},
        ),
        "escape": (tiny_recipe(demo_assets, model="../outside.safetensors"), {"outside_folder"}),
    }
    for job_id, (recipe, codes) in cases.items():
        with pytest.raises(EngineError) as caught:
            await client.run(job_id, recipe)
        assert caught.value.code.value in codes, (job_id, caught.value.message)
        assert caught.value.message
        status = await client.status(job_id)
        assert status.state == "failed" and status.error["code"] in codes
    # The queue survives failures.
    assert len(await client.run("after-failures", tiny_recipe(demo_assets))) == 1


async def test_request_errors_have_codes_and_http_statuses(engine, demo_assets) -> None:
    _, base = engine
    long_prompt = tiny_recipe(demo_assets, prompt="x" * 10_001).to_json()
    status, body = await raw(base, "POST", "/jobs", json={"id": "long", "recipe": long_prompt})
    assert status == 400 and body["error"]["code"] == "invalid_recipe"
    assert "10000" in body["error"]["message"]
    status, body = await raw(base, "POST", "/jobs", data=b"{not json")
    assert status == 400 and body["error"]["code"] == "invalid_recipe"
    bad_field = {**tiny_recipe(demo_assets).to_json(), "unsafe": True}
    status, body = await raw(base, "POST", "/jobs", json={"id": "bad", "recipe": bad_field})
    assert status == 400 and "unsafe" in body["error"]["message"]
    status, body = await raw(base, "POST", "/jobs", data=b"x" * (300 * 1024))
    assert status == 413 and body["error"]["code"] == "invalid_recipe"
    status, body = await raw(base, "GET", "/jobs/never-submitted")
    assert status == 404 and body["error"]["code"] == "unknown_job"
    status, body = await raw(base, "GET", "/jobs/never-submitted/events")
    assert status == 404 and body["error"]["code"] == "unknown_job"
    status, body = await raw(base, "GET", "/no/such/route")
    assert status == 404 and "error" in body


async def test_a_job_is_refused_until_every_picture_it_names_was_sent(engine, demo_assets) -> None:
    """``POST /jobs`` checks the input picture and each reference picture the recipe names are
    held (``POST /inputs``) before anything else: the one missing is named."""
    client, _ = engine

    def png(shade: int) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (64, 64), (shade, 90, 160)).save(out, "PNG")
        return out.getvalue()

    first = await client.put_input(png(10))
    second = hashlib.sha256(png(200)).hexdigest()
    recipe = tiny_recipe(demo_assets, init_image=first, references=(second,), architecture="sd15")
    with pytest.raises(EngineError, match=f"the reference picture {second[:12]}… has not been sent") as caught:
        await client.submit("refs-missing", recipe)
    assert caught.value.code == ErrorCode.INVALID_RECIPE
    assert await client.put_input(png(200)) == second
    # Every picture held: now the recipe's own rules answer (SD 1.5 reads no reference pictures).
    with pytest.raises(EngineError, match="SD 1.5 models take one input picture and no reference pictures"):
        await client.submit("refs-held", recipe)


async def test_jobs_handed_over_together_share_one_call_and_match_their_solo_images(
    engine, demo_assets, generator
) -> None:
    """Back-to-back submits with one model, stack, size, steps, sampler and CFG: one call."""
    from engine.generate import BATCH_TOLERANCE
    from tests.engine._images import mean_abs_diff

    client, _ = engine
    manager = client.manager  # type: ignore[attr-defined]
    lora = demo_assets.lora("pixel-art")
    stack = (LoraRef(lora.file, 0.6),)
    recipes = {
        f"together-{i}": tiny_recipe(demo_assets, prompt=f"lighthouse number {i}", seed=20 + i, loras=stack)
        for i in range(3)
    }
    for job_id, recipe in recipes.items():  # no await in between: all queued before the worker runs
        manager.submit(job_id, recipe)
    done = {}
    for job_id in recipes:
        events = [e async for e in client.events(job_id)]
        done[job_id] = events[-1]
    assert {d["type"] for d in done.values()} == {"done"}
    assert all(d["timings"]["batch_jobs"] == 3 for d in done.values())
    for job_id, recipe in recipes.items():
        together = await client.image(job_id, 0)
        alone = generator.run(recipe).images[0]
        assert mean_abs_diff(together, alone) <= BATCH_TOLERANCE


async def test_events_stream_is_ndjson_replayed_after_the_end(engine, demo_assets) -> None:
    client, base = engine
    await client.run("ndjson", tiny_recipe(demo_assets))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/jobs/ndjson/events") as response:
            assert response.headers["Content-Type"].startswith("application/x-ndjson")
            lines = (await response.read()).decode().splitlines()
    events = [json.loads(line) for line in lines]
    assert events[0] == {"type": "queued", "job": "ndjson", "position": 0}
    assert events[-1]["type"] == "done" and set(events[-1]["timings"]) >= {"prepare", "total"}


async def test_a_listener_that_hangs_up_does_not_stop_the_job(engine, demo_assets) -> None:
    client, base = engine
    await client.submit("hang-up", tiny_recipe(demo_assets, steps=20, width=128, height=128))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/jobs/hang-up/events") as response:
            first = json.loads(await response.content.readline())
    assert first["type"] == "queued"
    events = [e async for e in client.events("hang-up")]
    assert events[-1]["type"] == "done"
    job = client.manager._jobs["hang-up"]  # type: ignore[attr-defined]
    assert not job.listeners


class LoadingRunner:
    """A runner whose job first "loads a model" until the test lets it go, then takes 2 steps.

    The thread blocked in ``run`` is also what a frozen worker looks like from outside.
    """

    def __init__(self) -> None:
        self.loaded = threading.Event()

    def run(self, recipe: Recipe, *, on_step: Any, should_cancel: Any) -> Any:
        self.loaded.wait(60)
        for step in (1, 2):
            on_step(step, 2)
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, "PNG")
        return SimpleNamespace(images=[buffer.getvalue()], seeds=[recipe.seed], timings={})

    def health(self) -> dict[str, Any]:
        return {"device": "cpu"}


async def test_a_long_silent_job_gets_heartbeats_that_keep_the_client_waiting(demo_assets) -> None:
    runner = LoadingRunner()
    manager = JobManager(runner)
    app = create_app(
        manager,
        models_root=demo_assets.model_root,
        loras_root=demo_assets.lora_root,
        heartbeat_interval_s=0.2,
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    client = EngineClient(base, event_timeout_s=0.6)
    try:
        await client.submit("slow-load", Recipe(model="m.safetensors", prompt="p", steps=2))
        followed = asyncio.create_task(_events(client, "slow-load"))
        seen: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/jobs/slow-load/events") as response:
                async for line in response.content:
                    event = json.loads(line)
                    seen.append(event)
                    beats = [e for e in seen if e["type"] == "heartbeat"]
                    # Four quiet intervals are longer than the client's 0.6 s read timeout.
                    if len(beats) == 4:
                        runner.loaded.set()
        kinds = [e["type"] for e in seen]
        assert kinds[:2] == ["queued", "started"] and kinds[-1] == "done"
        assert kinds.index("heartbeat") < kinds.index("progress")
        assert {"type": "heartbeat", "job": "slow-load"} in seen
        # The client outlived the silence and hands its caller the job's events only.
        events = await followed
        assert [e["type"] for e in events] == ["queued", "started", "progress", "progress", "done"]
        # Heartbeats belong to a stream, not to the job's history.
        assert all(e["type"] != "heartbeat" for e in manager._jobs["slow-load"].events)
    finally:
        runner.loaded.set()
        await client.close()
        await server.close()


def test_the_client_waits_longer_than_the_engine_stays_silent() -> None:
    """A client that gave up before the second heartbeat would call a healthy engine dead."""
    assert DEFAULT_EVENT_TIMEOUT_S >= 2 * HEARTBEAT_INTERVAL_S


async def test_inspect_and_files_reach_only_the_configured_folders(
    engine, demo_assets, tmp_path: Path
) -> None:
    client, base = engine
    lora = demo_assets.lora("pixel-art")
    info = await client.inspect("lora", lora.file)
    assert info == inspect_file(
        demo_assets.lora_root / lora.file, relative_to=demo_assets.lora_root.resolve()
    )
    model = await client.inspect("model", demo_assets.models["sdxl"])
    assert (model.kind, model.architecture) == ("checkpoint", "sdxl")
    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(b"")
    link = demo_assets.lora_root / "escape-link.safetensors"
    os.symlink(outside, link)
    try:
        for path in ("../models/" + demo_assets.models["sd15"], str(outside), link.name):
            with pytest.raises(EngineError) as caught:
                await client.inspect("lora", path)
            assert caught.value.code is ErrorCode.OUTSIDE_FOLDER, path
        listed = {entry.path for entry in await client.list_files("lora")}
        assert link.name not in listed
    finally:
        link.unlink()
    assert listed == {lo.file for lo in demo_assets.loras}
    models = {entry.path for entry in await client.list_files("model")}
    assert models == set(demo_assets.models.values())
    status, body = await raw(base, "GET", "/files?kind=home")
    assert status == 400 and body["error"]["code"] == "invalid_recipe"
    status, body = await raw(base, "POST", "/inspect", json={"kind": ["lora"], "path": "a"})
    assert status == 400 and body["error"]["code"] == "invalid_recipe"
    status, body = await raw(base, "POST", "/inspect", json={"kind": "lora", "path": "a.ckpt"})
    assert status == 415 and body["error"]["code"] == "not_safetensors"


async def test_health_reports_device_memory_queue_and_loaded_state(engine, demo_assets) -> None:
    client, _ = engine
    lora = demo_assets.lora("pixel-art")
    await client.run("warm", tiny_recipe(demo_assets, loras=(LoraRef(lora.file, 1.0),)))
    health = await client.health()
    assert health["status"] == "ok" and health["device"] == "cpu"
    assert health["memory"]["rss_bytes"] > 10 * 1024**2
    assert health["queue"] == {
        "queued": 0,
        "running": None,
        "completed": health["queue"]["completed"],
    }
    assert health["folders"]["model"] == str(demo_assets.model_root)
    assert health["architectures"] == ["sd15", "sdxl", "flux", "zimage", "qwen_image", "flux2"]  # what registration lets in (engine.support)
    assert health["memory_plan"] is None  # an SD model: no FLUX placement to report
    assert health["loaded_model"] == demo_assets.models["sd15"]
    assert health["model_architecture"] == "SD 1.5"
    cached = {entry["file"]: entry["bytes"] for entry in health["cached_loras"]}
    # Its tensors, not its file: the header and metadata are not kept (whichever other tests
    # shared this engine and cached their LoRAs before).
    assert 0 < cached[lora.file] < (demo_assets.lora_root / lora.file).stat().st_size
    assert health["cached_lora_bytes"] == sum(cached.values())


def test_settings_come_from_flags_then_environment(demo_assets) -> None:
    env = {
        "ATELIER_ENGINE_MODELS": str(demo_assets.model_root),
        "ATELIER_ENGINE_LORAS": str(demo_assets.lora_root),
        "ATELIER_ENGINE_PORT": "9999",
        "ATELIER_ENGINE_CACHE_BYTES": "512MiB",
        "ATELIER_ENGINE_DEVICE": "cpu",
        "ATELIER_ENGINE_TOKEN": ENGINE_TOKEN,
    }
    config = parse_serve_args(["--port", "7000", "--cache-loras", "3"], env)
    assert (config.port, config.cache_loras, config.device) == (7000, 3, "cpu")
    assert config.cache_bytes == 512 * 1024**2 and config.host == "127.0.0.1"
    assert config.models == demo_assets.model_root.resolve()
    assert parse_size("2GiB") == 2 * 1024**3 and parse_size("1.5GB") == 1_500_000_000
    with pytest.raises(ValueError, match="--models"):
        parse_serve_args([], {})
    with pytest.raises(ValueError, match="does not exist"):
        parse_serve_args(["--models", "/nonexistent", "--loras", "/nonexistent"], {})


# --- the real process ------------------------------------------------------------------


async def _events(client: EngineClient, job_id: str) -> list[dict[str, Any]]:
    return [event async for event in client.events(job_id)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _spawn(demo_assets, *listen: str) -> subprocess.Popen[str]:
    env = {**os.environ, "ATELIER_ENGINE_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "engine", "serve", "--models", str(demo_assets.model_root)]
    command += ["--loras", str(demo_assets.lora_root), *listen]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


async def test_the_serve_command_runs_jobs_and_shuts_down_cleanly(demo_assets) -> None:
    """SIGTERM mid-job: the running and queued jobs end as "cancelled" for their listeners."""
    port = _free_port()
    process = _spawn(demo_assets, "--port", str(port))
    try:
        async with EngineClient(f"http://127.0.0.1:{port}", token=ENGINE_TOKEN) as client:
            health = await client.wait_ready(120)
            assert health["pid"] == process.pid
            images = await client.run("proc-1", tiny_recipe(demo_assets))
            assert Image.open(io.BytesIO(images[0])).size == (64, 64)
            long = tiny_recipe(demo_assets, steps=150, width=128, height=128)
            await client.submit("proc-long", long)
            await client.submit("proc-waiting", long)
            waiting = asyncio.create_task(_events(client, "proc-waiting"))
            running: list[dict[str, Any]] = []
            async for event in client.events("proc-long"):
                running.append(event)
                if event["type"] == "progress" and event["step"] == 1:
                    process.send_signal(signal.SIGTERM)
            assert running[-1]["type"] == "failed"
            assert running[-1]["error"]["code"] == "cancelled"
            assert max(e["step"] for e in running if e["type"] == "progress") < 150
            assert (await waiting)[-1] == {
                "type": "failed",
                "job": "proc-waiting",
                "error": {"code": "cancelled", "message": "the job was cancelled"},
            }
        output, _ = await asyncio.to_thread(process.communicate, timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert f"engine ready at http://127.0.0.1:{port}" in output
    assert "engine stopped" in output and "Traceback" not in output
    assert ENGINE_TOKEN not in output  # the secret is never logged


async def test_a_crashed_engine_is_reported_to_a_waiting_client(demo_assets, tmp_path) -> None:
    socket_path = str(tmp_path / "engine.sock")
    process = _spawn(demo_assets, "--unix-socket", socket_path)
    try:
        async with EngineClient(unix_socket=socket_path, token=ENGINE_TOKEN) as client:
            await client.wait_ready(120)
            await client.submit(
                "doomed", tiny_recipe(demo_assets, steps=150, width=128, height=128)
            )
            with pytest.raises(EngineError) as caught:
                async for event in client.events("doomed"):
                    if event["type"] == "progress":
                        process.kill()
            assert caught.value.code is ErrorCode.ENGINE_UNAVAILABLE
            with pytest.raises(EngineError) as again:
                await client.health()
            assert again.value.code is ErrorCode.ENGINE_UNAVAILABLE
            assert "not running" in again.value.message
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


async def test_a_frozen_engine_process_is_reported_as_stopped_answering(demo_assets) -> None:
    """The reported bug: SIGSTOP (a hung process, not a dead one) used to hang the client."""
    port = _free_port()
    process = _spawn(demo_assets, "--port", str(port))
    try:
        # Above the engine's 5-s heartbeat interval, so only a silent engine trips it.
        async with EngineClient(f"http://127.0.0.1:{port}", token=ENGINE_TOKEN, event_timeout_s=8) as client:
            await client.wait_ready(120)
            await client.submit("frozen", tiny_recipe(demo_assets, steps=150, width=128, height=128))
            received: list[dict[str, Any]] = []
            with pytest.raises(EngineError) as caught:
                async with asyncio.timeout(60):  # a hang fails the test instead of blocking it
                    async for event in client.events("frozen"):
                        received.append(event)
                        if event["type"] == "progress":
                            process.send_signal(signal.SIGSTOP)
            assert caught.value.code is ErrorCode.ENGINE_UNAVAILABLE
            assert "stopped answering" in caught.value.message
            assert received[-1]["type"] == "progress"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        process.wait()


def test_a_stale_socket_is_replaced_but_a_regular_file_is_never_deleted(tmp_path: Path) -> None:
    from engine.__main__ import _remove_socket

    stale = tmp_path / "engine.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(stale))
    listener.close()  # what a killed engine leaves behind
    _remove_socket(str(stale))
    assert not stale.exists()
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    with pytest.raises(SystemExit, match="not a socket"):
        _remove_socket(str(precious))
    assert precious.read_text() == "keep me"
    _remove_socket(str(tmp_path / "absent.sock"))  # nothing there: nothing to do
