"""Run ``python -m bot`` (through :mod:`tests.bot.bot_child`) as its own process against a
Discord double; shared by the process tests and ``python -m tests.bench.jobs``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sandbox.discord_double import DiscordDouble


def spawn_bot(
    double: DiscordDouble, data_dir: Path, engine_urls: str, *, log: Path, report: Path | None = None,
    **env: str,
) -> subprocess.Popen[bytes]:
    """The bot on ``data_dir`` with its settings in the environment, as an operator gives them."""
    settings = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "DISCORD_TOKEN": double.token,
        "ATELIER_DATA_DIR": str(data_dir),
        "ATELIER_ENGINE_URLS": engine_urls,
        **env,
    }
    command = [sys.executable, "-m", "tests.bot.bot_child", "--api", double.api_base, "--gateway", double.gateway_url]
    if report is not None:
        command += ["--report", str(report)]
    with log.open("ab") as sink:
        return subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=settings)


def end_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
