"""The engine's HTTP face: the API described in :mod:`engine.protocol`, nothing more.

It listens on loopback or a Unix socket by default because anyone who can reach it can spend
the GPU; files are reachable only inside the configured model and LoRA folders, and request
bodies are small and bounded, so a bad client cannot make the engine read or allocate much.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.auth import TOKEN_KEY, require_token
from engine.downloads import DownloadManager
from engine.inspect import inspect_file
from engine.jobs import JobManager
from engine.paths import list_files, resolve_within
from engine.protocol import (
    MAX_BODY_BYTES,
    TERMINAL_EVENTS,
    DownloadRequest,
    EngineError,
    ErrorCode,
    Recipe,
    http_status,
)
from engine.support import RUNNABLE_ARCHITECTURES

log = logging.getLogger("engine.server")

HEALTH_RUNNER_TIMEOUT_S = 2.0
#: Seconds of silence on an event stream after which a ``heartbeat`` event goes out. The
#: client gives up after three of them (``engine.client.DEFAULT_EVENT_TIMEOUT_S``).
HEARTBEAT_INTERVAL_S = 5.0


MANAGER_KEY = web.AppKey("manager", JobManager)
FOLDERS_KEY = web.AppKey("folders", dict)
STARTED_KEY = web.AppKey("started", float)
HEARTBEAT_KEY = web.AppKey("heartbeat_interval_s", float)
DOWNLOADS_KEY = web.AppKey("downloads", DownloadManager)


def reachable_beyond_loopback(host: str) -> bool:
    """Whether a TCP bind on ``host`` can be reached from other machines.

    A host name counts as reachable: it can resolve to anything. An empty host binds every
    interface (aiohttp's default).
    """
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(name).is_loopback
    except ValueError:
        return True


def warn_if_exposed(host: str, address: str) -> bool:
    """Log a warning when the engine listens beyond loopback over plain HTTP (the README
    asks for TLS in front then): its token, prompts and images would cross the network in
    clear text. Returns whether it warned."""
    if not reachable_beyond_loopback(host):
        return False
    log.warning(
        "the engine listens on %s over plain HTTP: other machines can reach it, and its token, "
        "prompts and images cross the network unencrypted. Put TLS in front of it (a reverse proxy "
        "on a private link) or listen on 127.0.0.1 (--host / ATELIER_ENGINE_HOST).",
        address if host else f"{address} (every interface)",
    )
    return True


def error_response(error: EngineError) -> web.Response:
    return web.json_response(error.to_json(), status=http_status(error.code))


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except EngineError as exc:
        return error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        too_large = EngineError(
            ErrorCode.INVALID_RECIPE,
            f"the request body is larger than the {MAX_BODY_BYTES} bytes the engine accepts",
        )
        return web.json_response(too_large.to_json(), status=413)
    except web.HTTPException as exc:
        if exc.status >= 400:
            code = ErrorCode.UNKNOWN_JOB if exc.status == 404 else ErrorCode.INVALID_RECIPE
            return web.json_response(
                EngineError(code, f"{request.method} {request.path}: {exc.reason}").to_json(),
                status=exc.status,
            )
        raise
    except Exception as exc:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(
            EngineError(ErrorCode.INTERNAL, f"the engine failed on this request ({exc!r})")
        )


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineError(
            ErrorCode.INVALID_RECIPE, f"the request body is not JSON ({exc})"
        ) from exc
    if not isinstance(body, dict):
        raise EngineError(ErrorCode.INVALID_RECIPE, "the request body must be a JSON object")
    return body


def _recipe(data: Any) -> Recipe:
    if not isinstance(data, dict):
        raise EngineError(ErrorCode.INVALID_RECIPE, "'recipe' must be a JSON object")
    try:
        return Recipe.from_json(data)
    except EngineError:
        raise
    except (TypeError, ValueError) as exc:
        raise EngineError(ErrorCode.INVALID_RECIPE, f"the recipe is malformed: {exc}") from exc


async def submit_job(request: web.Request) -> web.Response:
    body = await _json_body(request)
    job_id = body.get("id")
    if not isinstance(job_id, str) or not job_id:
        raise EngineError(ErrorCode.INVALID_RECIPE, "the job needs a string 'id'")
    manager = request.app[MANAGER_KEY]
    try:
        return web.json_response(manager.status(job_id).to_json(), status=200)
    except EngineError:
        pass
    recipe = _recipe(body.get("recipe"))
    inputs = getattr(manager.runner, "inputs", None)
    for digest in recipe.pictures if inputs is not None else ():
        if not inputs.holds(digest):
            what = "input image" if digest == recipe.init_image else "reference picture"
            raise EngineError(ErrorCode.INVALID_RECIPE, f"the {what} {digest[:12]}… has not been sent "
                              "to this engine; send it with POST /inputs first")  # fmt: skip
    status = manager.submit(job_id, recipe)
    return web.json_response(status.to_json(), status=202)


async def put_input(request: web.Request) -> web.Response:
    """``POST /inputs``: an input image's bytes (the body itself, any content type), checked
    and held for image-to-image jobs; answers ``{"sha256": ...}``. Read in chunks up to the
    input cap, past the JSON routes' small body limit, and refused beyond it."""
    from engine.recipe.picture import MAX_BYTES

    inputs = getattr(request.app[MANAGER_KEY].runner, "inputs", None)
    if inputs is None:
        raise EngineError(ErrorCode.INVALID_RECIPE, "this engine takes no input images (image-to-image is off)")
    chunks, size = [], 0
    while chunk := await request.content.read(1 << 20):
        size += len(chunk)
        if size > MAX_BYTES:
            raise EngineError(ErrorCode.INVALID_RECIPE, f"an input image may have at most {MAX_BYTES} bytes")
        chunks.append(chunk)
    digest = await asyncio.to_thread(inputs.put, b"".join(chunks))
    return web.json_response({"sha256": digest})


async def job_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[MANAGER_KEY].status(request.match_info["id"]).to_json())


async def job_events(request: web.Request) -> web.StreamResponse:
    """The job's events as NDJSON, with a heartbeat after every quiet ``HEARTBEAT_KEY`` s.

    Heartbeats come from this coroutine on the event loop, not from the job's worker
    thread, so they flow while a job spends minutes loading a model before its first
    progress event. That also means they prove only that the engine process answers: a
    worker thread frozen inside a job keeps the heartbeats coming. Telling a slow job from
    a stuck one is left to the caller, which knows how long it is willing to wait without
    progress (the bot's dispatcher has a per-job stall limit for exactly that).
    """
    manager = request.app[MANAGER_KEY]
    job_id = request.match_info["id"]
    interval = request.app[HEARTBEAT_KEY]
    events = manager.events(job_id)
    manager.status(job_id)  # raise UNKNOWN_JOB before the 200 goes out
    heartbeat = json.dumps({"type": "heartbeat", "job": job_id}).encode() + b"\n"
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    # One pending read of the job's events at a time, never cancelled by a heartbeat:
    # cancelling it would close the event generator and lose the events still to come.
    pending: asyncio.Future[dict[str, Any]] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                await response.write(heartbeat)
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                break
            pending = None
            await response.write(json.dumps(event).encode() + b"\n")
            if event["type"] in TERMINAL_EVENTS:
                break
    except ConnectionResetError:
        return response  # the listener left; the job itself goes on
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await events.aclose()
    # A client may hang up as soon as it reads the terminal event; it has all it needs.
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def cancel_job(request: web.Request) -> web.Response:
    return web.json_response(request.app[MANAGER_KEY].cancel(request.match_info["id"]).to_json())


async def job_image(request: web.Request) -> web.Response:
    try:
        index = int(request.match_info["n"])
    except ValueError as exc:
        raise EngineError(ErrorCode.UNKNOWN_JOB, "the image number must be an integer") from exc
    data = request.app[MANAGER_KEY].image(request.match_info["id"], index)
    return web.Response(body=data, content_type="image/png")


def _folder(request: web.Request, kind: Any) -> Path:
    folders = request.app[FOLDERS_KEY]
    if not isinstance(kind, str) or kind not in folders:  # JSON may send a list: unhashable
        raise EngineError(ErrorCode.INVALID_RECIPE, "kind must be 'lora', 'model' or 'embedding'")
    return folders[kind]


async def inspect(request: web.Request) -> web.Response:
    body = await _json_body(request)
    kind = body.get("kind")
    root = _folder(request, kind)
    relative = body.get("path")
    if not isinstance(relative, str):
        raise EngineError(ErrorCode.UNKNOWN_FILE, "'path' must be a path relative to the folder")
    path = resolve_within(root, relative, allow_dir=kind == "model")
    info = await asyncio.to_thread(inspect_file, path, relative_to=root.resolve())
    return web.json_response(info.to_json())


async def files(request: web.Request) -> web.Response:
    kind = request.query.get("kind")
    root = _folder(request, kind)
    entries = await asyncio.to_thread(list_files, root, include_pipeline_folders=kind == "model")
    return web.json_response(
        {"files": [{"path": e.path, "size_bytes": e.size_bytes} for e in entries]}
    )


async def start_download(request: web.Request) -> web.Response:
    body = await _json_body(request)
    try:
        wanted = DownloadRequest.from_json(body)
    except (TypeError, ValueError) as exc:
        raise EngineError(ErrorCode.INVALID_RECIPE, f"the download request is malformed: {exc}") from exc
    status = request.app[DOWNLOADS_KEY].submit(wanted)
    return web.json_response(status.to_json(), status=202)


async def download_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[DOWNLOADS_KEY].status(request.match_info["id"]).to_json())


async def cancel_download(request: web.Request) -> web.Response:
    return web.json_response(request.app[DOWNLOADS_KEY].cancel(request.match_info["id"]).to_json())


def memory_report() -> dict[str, Any]:
    """RSS always; CUDA figures only when torch is already loaded (never import it here)."""
    report: dict[str, Any] = {"rss_bytes": _rss_bytes()}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        report["cuda_allocated_bytes"] = int(torch.cuda.memory_allocated())
        report["cuda_reserved_bytes"] = int(torch.cuda.memory_reserved())
        report["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return report


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def health(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    try:
        runner = await asyncio.wait_for(
            asyncio.to_thread(manager.runner.health), HEALTH_RUNNER_TIMEOUT_S
        )
    except TimeoutError:
        runner = {"note": "the generator is busy; its details are not available right now"}
    except Exception as exc:  # health must answer even while a job changes the generator
        runner = {"note": f"the generator's details could not be read ({exc!r})"}
    folders = request.app[FOLDERS_KEY]
    report = {
        "status": "ok",
        **runner,
        "queue": manager.queue_info(),
        "memory": {**memory_report(), **runner.get("memory", {})},
        "folders": {kind: str(path) for kind, path in folders.items()},
        # What this engine makes images with (engine.support): registration refuses the rest.
        "architectures": list(RUNNABLE_ARCHITECTURES),
        "uptime_s": round(time.monotonic() - request.app[STARTED_KEY], 3),
        "pid": os.getpid(),
    }
    return web.json_response(report)


def create_app(
    manager: JobManager,
    *,
    models_root: Path,
    loras_root: Path,
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
    token: str | None = None,
    downloads: DownloadManager | None = None,
) -> web.Application:
    """The aiohttp application; the job worker and the downloads start and stop with it.

    ``downloads`` fetches files into the LoRA folder (:mod:`engine.downloads`); without one
    the download routes answer that downloads are off.

    ``token`` is the shared secret every request must carry (:mod:`engine.auth`);
    ``python -m engine serve`` always passes one. None builds an open app, for tests that
    run it in-process and exercise something else.
    ``heartbeat_interval_s`` is the longest an event stream stays silent; keep it well
    below the clients' read timeout (tests shorten both).
    """
    if heartbeat_interval_s <= 0:
        raise ValueError(f"heartbeat_interval_s must be positive, not {heartbeat_interval_s}")
    # The token check runs first, so a refused caller learns nothing, not even a 404.
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[require_token, _errors])
    if token is not None:
        app[TOKEN_KEY] = token
    app[MANAGER_KEY] = manager
    # Textual-inversion embeddings live in the LoRA folder (e.g. an embeddings/ subfolder).
    app[FOLDERS_KEY] = {"model": Path(models_root), "lora": Path(loras_root), "embedding": Path(loras_root)}
    app[STARTED_KEY] = time.monotonic()
    app[HEARTBEAT_KEY] = float(heartbeat_interval_s)
    app[DOWNLOADS_KEY] = downloads or DownloadManager(Path(loras_root), enabled=False)

    async def lifecycle(app: web.Application) -> Any:
        await manager.start()
        await app[DOWNLOADS_KEY].start()
        yield
        await app[DOWNLOADS_KEY].stop()
        await manager.stop()

    async def stop_jobs(_app: web.Application) -> None:
        # Before aiohttp waits for open requests: event streams end with each job's terminal
        # event (queued and running jobs cancelled) instead of holding shutdown for a minute
        # while the running job goes on to its last step.
        await manager.stop()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(stop_jobs)
    app.router.add_post("/jobs", submit_job)
    app.router.add_post("/inputs", put_input)
    app.router.add_get("/jobs/{id}", job_status)
    app.router.add_get("/jobs/{id}/events", job_events)
    app.router.add_post("/jobs/{id}/cancel", cancel_job)
    app.router.add_get("/jobs/{id}/images/{n}", job_image)
    app.router.add_get("/health", health)
    app.router.add_post("/inspect", inspect)
    app.router.add_get("/files", files)
    app.router.add_post("/downloads", start_download)
    app.router.add_get("/downloads/{id}", download_status)
    app.router.add_post("/downloads/{id}/cancel", cancel_download)
    return app
