"""A stand-in for ``python -m engine serve`` that follows a plan: crash at start, or serve.

``EngineProcess`` runs ``<python> -m engine serve ... --port N``; the supervision tests give it
a ``python`` that is this file's launcher script, so each start takes the next line of the
plan file (``crash``, ``hang``, or ``serve``) and records when it started. ``serve`` answers
``GET /health`` like the engine; ``hang`` never answers; ``crash`` exits with code 3.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path


def next_step(plan: Path) -> str:
    lines = plan.read_text().splitlines()
    step = lines[0] if lines else "serve"
    plan.write_text("\n".join(lines[1:]))
    with open(str(plan) + ".log", "a") as log:
        log.write(f"{time.monotonic():.3f} {step}\n")
    return step


async def serve(port: int) -> None:
    from aiohttp import web

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pid": os.getpid()})

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def main(argv: list[str]) -> int:
    port = int(argv[argv.index("--port") + 1])
    step = next_step(Path(os.environ["ATELIER_FAKE_ENGINE_PLAN"]))
    if step == "crash":
        print("fake engine: crashing on purpose", flush=True)
        return 3
    if step == "hang":
        time.sleep(3600)
        return 0
    asyncio.run(serve(port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
