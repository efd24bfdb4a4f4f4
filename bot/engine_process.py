"""The engine as a child process of the bot: started on loopback, watched, restarted.

The engine holds torch and the GPU; the bot must not. Running it as a separate process also
means a CUDA crash or an out-of-memory kill takes down only the engine: the bot notices,
tells the affected users, and starts a fresh one. The engine binds 127.0.0.1 only, so
nothing outside the machine can submit jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp

log = logging.getLogger(__name__)

OnExit = Callable[[int | None], Awaitable[None] | None]


class EngineStartError(RuntimeError):
    """The engine did not become healthy; the message includes the end of its output."""


class EngineProcess:
    """Spawn ``python -m engine serve`` and keep it alive until :meth:`stop`.

    ``on_exit`` is called with the exit code whenever the engine dies unexpectedly, before
    the restart, so the dispatcher can fail the jobs it had in flight with a clear message.
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
        max_restarts: int = 5,
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
        self.restart = restart
        self.max_restarts = max_restarts
        #: The engine's shared secret, handed over in the child's environment (see bot.engine_token).
        self._token = token
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self._tail: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

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
        """Start the engine and wait until ``/health`` answers (or raise with its output)."""
        self._stopping = False
        await self._spawn()
        self._watch = asyncio.create_task(self._watchdog(), name="engine-watchdog")

    async def _spawn(self) -> None:
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self._token:
            env["ATELIER_ENGINE_TOKEN"] = self._token
        self._tail = []
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

    async def _watchdog(self) -> None:
        while not self._stopping:
            proc = self._proc
            if proc is None:
                return
            code = await proc.wait()
            if self._stopping:
                return
            log.error("engine exited unexpectedly with code %s", code)
            if self.on_exit is not None:
                result = self.on_exit(code)
                if asyncio.iscoroutine(result):
                    await result
            if not self.restart or self.restarts >= self.max_restarts:
                log.error("engine not restarted (%d restarts so far)", self.restarts)
                return
            self.restarts += 1
            await asyncio.sleep(min(30.0, 0.5 * 2**self.restarts))
            try:
                await self._spawn()
            except EngineStartError as exc:
                log.error("engine restart failed: %s", exc)
                return

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def stop(self) -> None:
        """Stop watching and end the engine (SIGTERM, then SIGKILL after 10 s)."""
        self._stopping = True
        await self._terminate()
        for task in (self._watch, self._reader):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
