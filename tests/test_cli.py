"""What a person at a terminal sees: ``--help``, and the one-line errors for a wrong setup.

Each test runs the real command in its own process (``python -m bot``, ``python -m engine``,
or the bot's entry point pointed at a closed port) and reads what it printed.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False,
        env=env or dict(os.environ), cwd=ROOT,
    )  # fmt: skip


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bot_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATELIER_", "DISCORD_"))}
    env.update(
        DISCORD_TOKEN="MTIz.not-a-real.token", ATELIER_DATA_DIR=str(tmp_path / "data"),
        ATELIER_IMAGE_CLASSIFIER="off", ATELIER_ENGINE_PORT=str(closed_port()), **settings,
    )  # fmt: skip
    return env


def test_bot_help_lists_its_commands_and_points_to_the_configuration_table() -> None:
    done = run("-m", "bot", "--help")
    assert done.returncode == 0, done.stderr
    assert "make demo" in done.stdout and "python -m bot read-recipe" in done.stdout
    assert "README.md" in done.stdout and '"Configuration"' in done.stdout
    assert "\n## Configuration\n" in (ROOT / "README.md").read_text(encoding="utf-8")  # where it points exists


@pytest.mark.parametrize(
    "args",
    [
        ("engine", "--help"), ("engine", "serve", "--help"), ("engine", "inspect", "--help"),
        ("sandbox", "build-models", "--help"), ("bot", "read-recipe", "--help"), ("sandbox", "demo", "--help"),
        ("sandbox", "--help"),
    ],
)  # fmt: skip
def test_help_shows_no_restructuredtext_markup(args: tuple[str, ...]) -> None:
    done = run("-m", *args)
    assert done.returncode == 0, done.stderr
    assert "``" not in done.stdout and ":mod:" not in done.stdout and ":func:" not in done.stdout, done.stdout


def test_bot_demo_points_to_the_sandbox_without_importing_it() -> None:
    """An installed bot has no sandbox: ``python -m bot demo`` says where the demo is instead."""
    done = run("-m", "bot", "demo", "--out", "x")
    assert done.returncode == 2
    assert "make demo" in done.stderr and "python -m sandbox demo" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_serve_help_lists_every_engine_variable_the_readme_names() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    promised = {m for line in readme.splitlines() if line.startswith("| `--") for m in re.findall(r"`(ATELIER_ENGINE_\w+)`", line)}
    assert len(promised) >= 10  # the README's table of the engine's flags
    done = run("-m", "engine", "serve", "--help")
    assert done.returncode == 0, done.stderr
    listed = set(re.findall(r"ATELIER_ENGINE_\w+", done.stdout))
    assert promised <= listed, sorted(promised - listed)
    assert {"ATELIER_ENGINE_MODELS", "ATELIER_ENGINE_LORAS", "ATELIER_ENGINE_TOKEN"} <= listed


def test_missing_folders_name_the_bots_settings_once_without_usage(tmp_path: Path) -> None:
    env = bot_env(tmp_path, ATELIER_MODEL_DIR=str(tmp_path / "no-models"), ATELIER_LORA_DIR=str(tmp_path / "no-loras"))
    done = run("-m", "bot", env=env)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert output.count("ATELIER_MODEL_DIR") == 1 and output.count("ATELIER_LORA_DIR") == 1, output
    assert "usage:" not in output and "Traceback" not in output, output
    assert "no-models' does not exist" in output


def test_the_engine_names_a_missing_folder_in_one_line(tmp_path: Path) -> None:
    done = run("-m", "engine", "serve", "--models", str(tmp_path / "absent"), "--loras", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"python -m engine serve: the models folder '{tmp_path / 'absent'}' does not exist "
        "(--models or ATELIER_ENGINE_MODELS)"
    ]


@pytest.mark.parametrize(
    ("host", "reason"), [("127.0.0.1:{port}", "connection refused"), ("discord.invalid", "does not resolve")]
)
def test_discord_unreachable_is_one_line(tmp_path: Path, host: str, reason: str) -> None:
    port = closed_port()
    address = host.format(port=port)
    env = bot_env(
        tmp_path, ATELIER_ENGINE_URLS=f"http://127.0.0.1:{port}", ATELIER_ENGINE_TOKEN="x" * 32, ATELIER_LOG_LEVEL="ERROR"
    )
    done = run(
        "-m", "tests.bot.bot_child", "--api", f"http://{address}/api/v10", "--gateway", f"ws://{address}", env=env
    )  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"atelier: cannot reach Discord at {address.split(':')[0]}") and reason in lines[0]


def test_which_binds_reach_beyond_loopback(caplog: pytest.LogCaptureFixture) -> None:
    from engine.server import reachable_beyond_loopback, warn_if_exposed

    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert not reachable_beyond_loopback(host), host
    for host in ("0.0.0.0", "::", "", "192.168.1.20", "engine.example.com"):
        assert reachable_beyond_loopback(host), host
    with caplog.at_level(logging.WARNING, logger="engine.server"):
        assert not warn_if_exposed("127.0.0.1", "http://127.0.0.1:7861")
        assert caplog.records == []
        assert warn_if_exposed("0.0.0.0", "http://0.0.0.0:7861")
    assert "plain HTTP" in caplog.text and "http://0.0.0.0:7861" in caplog.text


def test_an_engine_serving_every_interface_warns_in_its_log(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "loras").mkdir()
    command = [
        sys.executable, "-m", "engine", "serve", "--models", str(tmp_path / "models"), "--loras", str(tmp_path / "loras"),
        "--host", "0.0.0.0", "--port", "0", "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "engine ready" in line:
                break
    finally:
        proc.terminate()
        proc.wait(30)
    assert any("engine ready" in line for line in lines), "".join(lines)
    warnings = [line for line in lines if "WARNING" in line and "plain HTTP" in line]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0], "".join(lines)


async def test_an_engine_that_refuses_its_settings_is_reported_in_its_own_words(tmp_path: Path) -> None:
    """The folders exist, so the engine itself starts and refuses: its one line reaches the operator."""
    from bot.engine_link.process import EngineProcess, EngineStartError

    process = EngineProcess(
        model_dir=tmp_path, lora_dir=tmp_path, port=closed_port(), start_timeout=60, extra_args=["--cache-loras", "0"]
    )
    with pytest.raises(EngineStartError) as caught:
        await process.start()
    message = str(caught.value)
    assert "exited with code 2" in message and "python -m engine serve: --cache-loras must be at least 1" in message
    assert "usage:" not in message
    await process.stop()
