"""The engine as a child process of the bot: started on loopback, watched, restarted.

The engine holds torch and the GPU; the bot must not. Running it as a separate process also
means a CUDA crash or an out-of-memory kill takes down only the engine: the bot notices at
once (it waits on the process) and starts a fresh one. The engine binds 127.0.0.1 only, so
nothing outside the machine can submit jobs.

Supervision never gives up while the bot runs. A crash, or a restart that itself crashes or
never becomes healthy, is followed by another start after an exponential backoff (0.5 s
doubling up to 30 s), which resets once an engine has stayed up for ``healthy_after_s``.
:meth:`restart` ends a stuck engine (the dispatcher calls it when a job stalls) and lets the
same loop start a new one.

A bot killed with SIGKILL cannot stop its engine, which keeps running and keeps the jobs it
was given. The next bot finds it answering on the port and adopts it (watching its pid)
instead of failing to bind, so finished jobs are collected rather than run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

OnExit = Callable[[int | None], Awaitable[None] | None]
#: First wait before a restart; it doubles after each failed start, up to the maximum.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
#: An engine up this long is healthy again: the next crash restarts it after the first wait.
HEALTHY_AFTER_S = 60.0


class EngineStartError(RuntimeError):
    """The engine did not become healthy; the message includes the end of its output."""


class EngineProcess:
    """Spawn ``python -m engine serve`` and keep it alive until :meth:`stop`.

    ``on_exit`` is called with the exit code whenever the engine dies unexpectedly, before
    the restart, so the dispatcher can take back the jobs it had there.
    """

    def __init__(
        self,
        *,
        model_dir: Path,
        lora_dir: Path,
        port: int,
        python: str = "",
        start_timeout: float = 120.0,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        on_exit: OnExit | None = None,
        restart: bool = True,
        backoff_first_s: float = BACKOFF_FIRST_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        healthy_after_s: float = HEALTHY_AFTER_S,
        token: str = "",
    ) -> None:
        self.model_dir = Path(model_dir)
        self.lora_dir = Path(lora_dir)
        self.port = port
        self.python = python or sys.executable
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args)
        self.env = env
        self.on_exit = on_exit
        self.restart_on_exit = restart
        self.backoff_first_s = backoff_first_s
        self.backoff_max_s = backoff_max_s
        self.healthy_after_s = healthy_after_s
        #: The engine's shared secret, handed over in the child's environment (see bot.engine_link.token).
        self._token = token
        #: Starts after the first one, successful or not.
        self.restarts = 0
        #: Exit codes of the engines that died, oldest first (the last 20).
        self.exits: list[int | None] = []
        #: "starting", "running", "restarting", "stopped"; for /queue and the logs.
        self.state = "stopped"
        self._proc: asyncio.subprocess.Process | None = None
        self._adopted_pid: int | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self._tail: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._up_since = 0.0
        self._failures = 0
        self._restart_reason: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid
        return self._adopted_pid

    @property
    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.returncode is None
        return self._adopted_pid is not None and _alive(self._adopted_pid)

    def command(self) -> list[str]:
        return [
            self.python, "-m", "engine", "serve",
            "--models", str(self.model_dir),
            "--loras", str(self.lora_dir),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            *self.extra_args,
        ]  # fmt: skip

    async def start(self) -> None:
        """Start the engine (or adopt one already answering on the port) and wait until
        ``/health`` answers; raise :class:`EngineStartError` with its output otherwise."""
        self._stopping = False
        self._check_folders()
        self.state = "starting"
        health = await self._probe()
        if health is not None and health.get("status") == "ok" and health.get("pid"):
            self._adopt(int(health["pid"]))
        else:
            try:
                await self._spawn()
            except EngineStartError:
                self.state = "stopped"
                raise
        self.state = "running"
        self._up_since = time.monotonic()
        self._watch = asyncio.create_task(self._watchdog(), name="engine-watchdog")

    def _check_folders(self) -> None:
        """Name the bot's setting for a missing folder, once, before any process starts.

        The engine would refuse it too, but in its own words (its ``--models`` flag) and
        after an import of torch, inside a dump of its output.
        """
        problems = [
            f"the {label} folder '{folder}' does not exist: set {variable} ({key} in a --config file) to {what}"
            for label, folder, variable, key, what in (
                ("models", self.model_dir, "ATELIER_MODEL_DIR", "model_dir", "the folder of your checkpoints"),
                ("LoRA", self.lora_dir, "ATELIER_LORA_DIR", "lora_dir", "the folder of your LoRAs (an empty one will do)"),
            )
            if not folder.is_dir()
        ]  # fmt: skip
        if problems:
            raise EngineStartError("; ".join(problems))

    def _adopt(self, pid: int) -> None:
        self._proc = None
        self._adopted_pid = pid
        log.warning(
            "an engine is already answering on %s (pid %s), probably left running by a bot that "
            "was killed; using it and the jobs it holds", self.url, pid,
        )

    async def _probe(self) -> dict[str, Any] | None:
        """The full ``/health`` of an engine already on the port, if it takes our token
        (without it an engine tells only that it is up, not its pid: it is not ours)."""
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            async with aiohttp.ClientSession(headers=headers) as session:
                async with session.get(self.url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return await resp.json()
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None
        return None

    async def _spawn(self) -> None:
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self._token:
            env["ATELIER_ENGINE_TOKEN"] = self._token
        self._tail = []
        self._adopted_pid = None
        self._proc = await asyncio.create_subprocess_exec(
            *self.command(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        self._reader = asyncio.create_task(self._read_output(self._proc))
        log.info("engine started (pid %s) on %s", self._proc.pid, self.url)
        await self._wait_healthy()

    async def _read_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._tail = (self._tail + [line])[-40:]
            log.info("engine: %s", line)

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self._proc is None or self._proc.returncode is not None:
                    await asyncio.sleep(0.1)  # let the reader collect the last lines
                    raise EngineStartError(
                        f"the engine exited with code {self._proc.returncode if self._proc else '?'} "
                        "while starting. Its last output:\n" + "\n".join(self._tail[-20:])
                    )
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(
                        self.url + "/health", timeout=aiohttp.ClientTimeout(total=2)
                    ) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.25)
        await self._terminate()
        raise EngineStartError(
            f"the engine did not answer {self.url}/health within {self.start_timeout:.0f} s; "
            "raise ATELIER_ENGINE_START_TIMEOUT or check its output:\n" + "\n".join(self._tail[-20:])
        )

    async def _wait_exit(self) -> int | None:
        if self._proc is not None:
            return await self._proc.wait()
        pid = self._adopted_pid
        # Not our child, so there is nothing to wait on: polling is the only way.
        while pid is not None and _alive(pid):  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        return None  # not our child: its exit code is not ours to read

    def _backoff(self) -> float:
        wait = min(self.backoff_max_s, self.backoff_first_s * 2**self._failures)
        self._failures += 1
        return wait

    async def _watchdog(self) -> None:
        while not self._stopping:
            code = await self._wait_exit()
            if self._stopping:
                return
            self.exits = (self.exits + [code])[-20:]
            reason, self._restart_reason = self._restart_reason, None
            if reason:
                log.warning("engine stopped to be restarted (%s)", reason)
            else:
                log.error("engine exited unexpectedly with code %s", code)
            self.state = "restarting"
            if self.on_exit is not None:
                try:
                    result = self.on_exit(code)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    log.exception("the engine's exit handler failed")
            if not self.restart_on_exit:
                self.state = "stopped"
                return
            if time.monotonic() - self._up_since >= self.healthy_after_s:
                self._failures = 0  # it ran well for a while: this is a fresh incident
            while not self._stopping:
                wait = 0.0 if reason else self._backoff()
                reason = None
                await asyncio.sleep(wait)
                if self._stopping:
                    return
                self.restarts += 1
                try:
                    await self._spawn()
                except EngineStartError as exc:
                    log.error("engine restart %d failed: %s", self.restarts, exc)
                    continue
                except OSError as exc:  # e.g. the python binary vanished: keep trying
                    log.error("engine restart %d could not start a process: %s", self.restarts, exc)
                    continue
                self.state = "running"
                self._up_since = time.monotonic()
                break

    async def restart(self, reason: str) -> None:
        """End the engine (a stuck one too) so the watchdog starts a new one at once."""
        if self._stopping or self.state != "running":
            return
        self._restart_reason = reason
        await self._terminate(grace_s=5.0)

    async def _terminate(self, grace_s: float = 10.0) -> None:
        proc = self._proc
        if proc is not None:
            if proc.returncode is not None:
                return
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=grace_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            return
        pid = self._adopted_pid
        if pid is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while _alive(pid) and time.monotonic() < deadline:  # noqa: ASYNC110 (not our child)
                await asyncio.sleep(0.1)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    async def stop(self) -> None:
        """Stop watching and end the engine (SIGTERM, then SIGKILL after 10 s)."""
        self._stopping = True
        self.state = "stopped"
        await self._terminate()
        for task in (self._watch, self._reader):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (an exited child nobody reaped) still answers kill 0.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True
