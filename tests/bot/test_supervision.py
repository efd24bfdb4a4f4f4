"""Engine supervision: restarts for as long as the bot runs, with a backoff that resets."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from bot.engine_link.process import EngineProcess
from tests.bot.conftest import free_port


def launcher(tmp_path: Path) -> Path:
    """An executable that EngineProcess runs as its "python": it starts the fake engine."""
    script = tmp_path / "fake-python"
    fake = Path(__file__).with_name("fake_engine.py")
    script.write_text(f"#!/bin/sh\nexec {sys.executable} {fake} \"$@\"\n")
    script.chmod(0o755)
    return script


def starts(plan: Path) -> list[tuple[float, str]]:
    log = Path(str(plan) + ".log")
    if not log.exists():
        return []
    return [(float(at), step) for at, step in (line.split() for line in log.read_text().splitlines())]


async def until(condition, within: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {within} s")
        await asyncio.sleep(0.05)


async def test_restarts_never_give_up_even_when_restarts_crash_and_the_backoff_resets(
    tmp_path: Path, monkeypatch
) -> None:
    plan = tmp_path / "plan"
    plan.write_text("serve\ncrash\ncrash\ncrash\nserve\nserve\n")
    monkeypatch.setenv("ATELIER_FAKE_ENGINE_PLAN", str(plan))
    exits: list[int | None] = []
    process = EngineProcess(
        model_dir=tmp_path, lora_dir=tmp_path, port=free_port(), python=str(launcher(tmp_path)),
        start_timeout=20, on_exit=exits.append, backoff_first_s=0.2, backoff_max_s=0.8, healthy_after_s=1.5,
    )  # fmt: skip
    await process.start()
    try:
        assert process.state == "running"
        first_pid = process.pid
        os.kill(first_pid or 0, signal.SIGKILL)
        # Three restarts crash (each while starting); supervision goes on and the fourth serves.
        await until(lambda: len(starts(plan)) == 5 and process.state == "running", 30, "the fourth restart")
        assert process.restarts == 4 and exits == [-signal.SIGKILL]
        times = [at for at, _ in starts(plan)]
        waits = [later - earlier for earlier, later in zip(times[1:], times[2:], strict=False)]
        assert waits[0] < waits[-1]  # the backoff grew between failed starts
        # After a healthy period the next crash is restarted after the first, short wait again.
        await asyncio.sleep(1.6)
        killed_at = time.monotonic()
        os.kill(process.pid or 0, signal.SIGKILL)
        await until(lambda: len(starts(plan)) == 6 and process.state == "running", 20, "the restart after a healthy period")
        assert starts(plan)[-1][0] - killed_at < 0.2 + 0.6
    finally:
        await process.stop()
    assert not process.running


async def test_restart_replaces_a_stuck_engine_and_a_new_bot_adopts_an_orphan(tmp_path: Path, monkeypatch) -> None:
    plan = tmp_path / "plan"
    plan.write_text("serve\nserve\n")
    monkeypatch.setenv("ATELIER_FAKE_ENGINE_PLAN", str(plan))
    port = free_port()
    process = EngineProcess(
        model_dir=tmp_path, lora_dir=tmp_path, port=port, python=str(launcher(tmp_path)), start_timeout=20,
    )  # fmt: skip
    await process.start()
    adopter = None
    try:
        old = process.pid
        await process.restart("a job made no progress")
        await until(lambda: process.pid != old and process.state == "running", 20, "the restart")
        assert process.restarts == 1
        # A bot killed with SIGKILL leaves its engine running; the next one adopts it.
        adopter = EngineProcess(model_dir=tmp_path, lora_dir=tmp_path, port=port, python=str(launcher(tmp_path)))
        await adopter.start()
        assert adopter.pid == process.pid and len(starts(plan)) == 2  # nothing new was spawned
    finally:
        if adopter is not None:
            await adopter.stop()  # ends the adopted engine, which is also the first one's child
        await process.stop()
