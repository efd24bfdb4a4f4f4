"""The cluster's HTTP face: the engine API of :mod:`engine.server`, in front of the replicas.

The bot talks to the cluster as to one engine, with the same client, token and job protocol
(idempotent job ids, replayable event streams with heartbeats, status, cancel, images), so
the job table, recovery after a bot restart and the dispatcher's retry work unchanged.

Serve cannot address a given replica, so the ingress keeps what follows a job there: the
job's own streaming call to the replica Serve chose (by the job's model, the multiplexed id).
Status and events are answered from the record the call feeds; cancel cancels the call, which
Ray delivers at the replica's next ``await`` (the replica then stops the job at its next step).
A replica that dies mid-job breaks its call: the job fails with ``engine_unavailable``, which
the bot answers as it does for a crashed engine (the job runs once more, on any replica, under
a new idempotent id; a second loss fails it with a message that says so) while Ray restarts
the replica. The ingress runs as one replica: the job records live in it.

Listing, inspecting and downloading files happen here, on the shared folders every node
mounts (the README's "Many GPUs" section), as the standalone engine does them.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ray import serve
from ray.serve.exceptions import RequestCancelledError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from engine.auth import LIVENESS_PATH
from engine.cluster.settings import ClusterSettings
from engine.downloads import DownloadManager
from engine.inputs import InputStore
from engine.inspect import inspect_file
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
from engine.validation import validate_recipe

log = logging.getLogger("engine.cluster.ingress")
_JOB_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: Finished jobs remembered (for a bot that restarted), and those whose images are kept.
MAX_HISTORY = 1000
MAX_WITH_IMAGES = 64
IMAGE_TTL_S = 1800.0
#: Seconds the replica count read from Serve's controller stays fresh.
STATUS_TTL_S = 2.0
JOBS_PER_MINUTE_WINDOW_S = 60.0


@dataclass
class ClusterJob:
    id: str
    recipe: Recipe
    state: str = "queued"
    step: int = 0
    total_steps: int = 0
    images: list[bytes] = field(default_factory=list)
    error: dict[str, str] | None = None
    seconds: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    listeners: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)
    replica: str | None = None
    call: Any = None
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def status(self, position: int = 0) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "position": position, "step": self.step,
                "total_steps": self.total_steps, "images": len(self.images), "error": self.error,
                "seconds": self.seconds}  # fmt: skip


@dataclass
class ReplicaSeen:
    """What the ingress learnt of one replica from the jobs it ran (for /health and /queue)."""

    id: str
    pid: int = 0
    models: list[str] = field(default_factory=list)
    in_flight: int = 0
    done_at: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=10_000))
    hits: int = 0
    misses: int = 0

    def report(self, now: float) -> dict[str, Any]:
        while self.done_at and now - self.done_at[0] > JOBS_PER_MINUTE_WINDOW_S:
            self.done_at.popleft()
        return {"id": self.id, "pid": self.pid, "load": self.in_flight, "models": list(self.models),
                "jobs_per_minute": len(self.done_at), "model_hits": self.hits, "model_misses": self.misses}  # fmt: skip


def _error(exc: EngineError) -> JSONResponse:
    return JSONResponse(exc.to_json(), status_code=http_status(exc.code))


class Ingress:
    """A Serve deployment class (decorated in :mod:`engine.cluster.app`)."""

    def __init__(self, replicas: DeploymentHandle, args: dict[str, Any]) -> None:
        self.settings = ClusterSettings.from_args(args)
        self.replicas = replicas
        self.jobs: dict[str, ClusterJob] = {}
        self.seen: dict[str, ReplicaSeen] = {}
        self.completed = 0
        self.started = time.monotonic()
        self.downloads = DownloadManager(
            self.settings.loras, enabled=self.settings.allow_downloads, allowed_hosts=self.settings.download_hosts
        )
        self.folders = {"model": self.settings.models, "lora": self.settings.loras, "embedding": self.settings.loras}
        self._downloads_started = False
        #: Input images of image-to-image jobs (engine.inputs), sent on with each job.
        self.inputs = InputStore()
        self._status: tuple[float, dict[str, Any]] = (0.0, {})
        self._routes: list[tuple[str, re.Pattern[str], Any]] = [
            ("POST", re.compile(r"/jobs"), self.submit),
            ("POST", re.compile(r"/inputs"), self.put_input),
            ("GET", re.compile(r"/jobs/(?P<id>[^/]+)"), self.job_status),
            ("GET", re.compile(r"/jobs/(?P<id>[^/]+)/events"), self.job_events),
            ("POST", re.compile(r"/jobs/(?P<id>[^/]+)/cancel"), self.cancel),
            ("GET", re.compile(r"/jobs/(?P<id>[^/]+)/images/(?P<n>[^/]+)"), self.image),
            ("GET", re.compile(r"/health"), self.health),
            ("POST", re.compile(r"/inspect"), self.inspect),
            ("GET", re.compile(r"/files"), self.files),
            ("POST", re.compile(r"/downloads"), self.start_download),
            ("GET", re.compile(r"/downloads/(?P<id>[^/]+)"), self.download_status),
            ("POST", re.compile(r"/downloads/(?P<id>[^/]+)/cancel"), self.cancel_download),
        ]

    # -- HTTP --------------------------------------------------------------------------------

    def _authorized(self, request: Request) -> tuple[bool, bool]:
        """(authorized, offered any token)."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return False, False
        return hmac.compare_digest(value.strip().encode(), self.settings.token.encode()), True

    async def __call__(self, request: Request) -> Response:
        path = "/" + request.url.path[len(request.scope.get("root_path", "")):].strip("/")
        ok, offered = self._authorized(request)
        if not ok:
            if request.method == "GET" and path == LIVENESS_PATH and not offered:
                return JSONResponse({"status": "ok"})
            return _error(EngineError(
                ErrorCode.UNAUTHORIZED,
                "this engine needs its token: send 'Authorization: Bearer <token>' with the value of "
                "ATELIER_ENGINE_TOKEN the cluster was started with",
            ))  # fmt: skip
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match and method == request.method:
                try:
                    return await handler(request, **match.groupdict())
                except EngineError as exc:
                    return _error(exc)
                except Exception as exc:
                    log.exception("unhandled error on %s %s", request.method, path)
                    return _error(EngineError(ErrorCode.INTERNAL, f"the engine failed on this request ({exc!r})"))
        return _error(EngineError(ErrorCode.UNKNOWN_JOB, f"{request.method} {path}: Not Found"))

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise EngineError(ErrorCode.INVALID_RECIPE, f"the request body is larger than the {MAX_BODY_BYTES} bytes the engine accepts")
        try:
            body = json.loads(raw or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EngineError(ErrorCode.INVALID_RECIPE, f"the request body is not JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise EngineError(ErrorCode.INVALID_RECIPE, "the request body must be a JSON object")
        return body

    # -- jobs --------------------------------------------------------------------------------

    def _status_of(self, job: ClusterJob) -> dict[str, Any]:
        """The job's status; its position counted as its replica's queue counts it.

        Jobs ahead of it on the same replica (arrived before it, in the ingress's order), plus
        one while that replica runs a job: what the standalone engine's queue answers. A job
        Serve has not handed to a replica yet has no place in a queue to tell (0).
        """
        if job.state != "queued" or job.replica is None:
            return job.status()
        ahead, running = 0, False
        before = True
        for other in self.jobs.values():  # in submission order
            before = before and other is not job
            if other.replica == job.replica:
                ahead += before and other.state == "queued"
                running = running or other.state == "running"
        return job.status(ahead + running)

    def _get(self, job_id: str) -> ClusterJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise EngineError(ErrorCode.UNKNOWN_JOB, f"no job '{job_id}' (it was never submitted, or it is older "
                              f"than the {MAX_HISTORY} jobs the cluster remembers)")  # fmt: skip
        return job

    async def submit(self, request: Request) -> Response:
        body = await self._body(request)
        job_id = body.get("id")
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            raise EngineError(ErrorCode.INVALID_RECIPE, "a job id must be 1 to 128 letters, digits or . _ : - (it goes in URLs)")
        existing = self.jobs.get(job_id)
        if existing is not None:
            return JSONResponse(self._status_of(existing))
        data = body.get("recipe")
        if not isinstance(data, dict):
            raise EngineError(ErrorCode.INVALID_RECIPE, "'recipe' must be a JSON object")
        try:
            recipe = Recipe.from_json(data)
        except EngineError:
            raise
        except (TypeError, ValueError) as exc:
            raise EngineError(ErrorCode.INVALID_RECIPE, f"the recipe is malformed: {exc}") from exc
        validate_recipe(recipe)
        for digest in recipe.pictures:
            if not self.inputs.holds(digest):
                what = "input image" if digest == recipe.init_image else "reference picture"
                raise EngineError(ErrorCode.INVALID_RECIPE, f"the {what} {digest[:12]}… has not been sent "
                                  "to this engine; send it with POST /inputs first")  # fmt: skip
        job = self.jobs[job_id] = ClusterJob(job_id, recipe, total_steps=recipe.steps * recipe.count)
        self._emit(job, {"type": "queued", "position": 0})
        job.task = asyncio.create_task(self._drive(job), name=f"cluster-job-{job_id}")
        self._trim()
        return JSONResponse(self._status_of(job), status_code=202)

    async def put_input(self, request: Request) -> Response:
        """``POST /inputs``, as the single engine answers it: the image's bytes, checked and held
        here; each image-to-image job carries its input to the replica that runs it."""
        from engine.recipe.picture import MAX_BYTES

        raw = await request.body()
        if len(raw) > MAX_BYTES:
            raise EngineError(ErrorCode.INVALID_RECIPE, f"an input image may have at most {MAX_BYTES} bytes")
        digest = await asyncio.to_thread(self.inputs.put, raw)
        return JSONResponse({"sha256": digest})

    async def _drive(self, job: ClusterJob) -> None:
        """Run ``job`` on the replica Serve picks for its model, recording what comes back."""
        handle = self.replicas.options(multiplexed_model_id=job.recipe.model, stream=True)
        init = self.inputs.get(job.recipe.init_image) if job.recipe.init_image else None
        references = [data for data in (self.inputs.get(d) for d in job.recipe.references) if data is not None]
        job.call = handle.run.remote(job.id, job.recipe.to_json(), init, references)
        seen: ReplicaSeen | None = None
        try:
            async for item in job.call:
                kind = item.get("type")
                if kind == "replica":
                    seen = self.seen.setdefault(item["replica"], ReplicaSeen(item["replica"]))
                    seen.pid, seen.models = int(item.get("pid", 0)), list(item.get("models", []))
                    seen.in_flight += 1
                    seen.hits += bool(item.get("hit"))
                    seen.misses += not item.get("hit")
                    job.replica = seen.id
                    continue
                if kind == "queued":
                    continue  # told once already, at submit
                if kind == "started":
                    job.state = "running"
                elif kind == "progress":
                    job.step, job.total_steps = int(item.get("step", 0)), int(item.get("total", job.total_steps))
                elif kind == "done":
                    item = dict(item)
                    job.images.extend(item.pop("image_data", []))
                    job.state, job.seconds = "done", item.get("seconds")
                    if seen is not None:
                        seen.done_at.append(time.monotonic())
                elif kind == "failed":
                    job.error = dict(item.get("error") or {})
                    job.state = "cancelled" if job.error.get("code") == ErrorCode.CANCELLED.value else "failed"
                self._emit(job, item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if job.cancel_requested or isinstance(exc, RequestCancelledError):
                self._end(job, "cancelled", ErrorCode.CANCELLED, "the job was cancelled")
            else:
                log.warning("job %s lost its replica %s: %r", job.id, job.replica, exc)
                if seen is not None:
                    self.seen.pop(seen.id, None)  # Ray starts a new one in its place
                    seen = None
                self._end(job, "failed", ErrorCode.ENGINE_UNAVAILABLE,
                          f"the replica running job '{job.id}' stopped ({type(exc).__name__}); Ray "
                          "restarts it, and the job can be submitted again")  # fmt: skip
        finally:
            if seen is not None:
                seen.in_flight -= 1
            if not job.finished:
                self._end(job, "failed", ErrorCode.ENGINE_UNAVAILABLE,
                          f"the replica's stream of job '{job.id}' ended before the job did")  # fmt: skip
            job.call = None
            job.finished_at = time.monotonic()
            self.completed += 1

    def _end(self, job: ClusterJob, state: str, code: ErrorCode, message: str) -> None:
        job.state, job.error = state, {"code": code.value, "message": message}
        self._emit(job, {"type": "failed", "error": dict(job.error)})

    def _emit(self, job: ClusterJob, event: dict[str, Any]) -> None:
        event = {**event, "job": job.id}
        job.events.append(event)
        for listener in list(job.listeners):
            listener.put_nowait(event)

    def _trim(self) -> None:
        """Bounded memory: old finished jobs are forgotten, old images dropped."""
        now = time.monotonic()
        finished = [job for job in self.jobs.values() if job.finished and job.finished_at is not None]
        for job in finished[:-MAX_WITH_IMAGES]:
            job.images.clear()
        for job in finished:
            if now - (job.finished_at or now) > IMAGE_TTL_S:
                job.images.clear()
        excess = len(self.jobs) - MAX_HISTORY
        for job in finished[: max(0, excess)]:
            del self.jobs[job.id]

    async def job_status(self, _request: Request, id: str) -> Response:
        return JSONResponse(self._status_of(self._get(id)))

    async def cancel(self, _request: Request, id: str) -> Response:
        job = self._get(id)
        if not job.finished:
            job.cancel_requested = True
            if job.call is not None:
                job.call.cancel()
        return JSONResponse(self._status_of(job))

    async def image(self, _request: Request, id: str, n: str) -> Response:
        job = self._get(id)
        try:
            index = int(n)
        except ValueError as exc:
            raise EngineError(ErrorCode.UNKNOWN_JOB, "the image number must be an integer") from exc
        if not 0 <= index < len(job.images):
            raise EngineError(ErrorCode.UNKNOWN_JOB, f"job '{id}' has {len(job.images)} image(s) (state "
                              f"{job.state}); there is no image {index}")  # fmt: skip
        return Response(job.images[index], media_type="image/png")

    async def job_events(self, request: Request, id: str) -> Response:
        """The job's events as NDJSON; with ``?images=inline`` its images come before ``done``.

        Each inline image is an ``{"type": "image", "index": i, "bytes": n}`` line followed by
        its ``n`` PNG bytes (not base64 in the line: a line reader caps line length, and the
        bytes stay as they are). It spares the bot one request per image through Serve's HTTP
        proxy, the slowest hop of a job here (``engine.client.EngineClient.inline_images``).
        """
        job = self._get(id)
        interval = self.settings.heartbeat_interval_s
        inline = request.query_params.get("images") == "inline"

        def encode(event: dict[str, Any]) -> bytes:
            line = json.dumps(event).encode() + b"\n"
            if not (inline and event["type"] == "done"):
                return line
            frames = [json.dumps({"type": "image", "job": job.id, "index": index, "bytes": len(data)}).encode()
                      + b"\n" + data for index, data in enumerate(list(job.images))]  # fmt: skip
            return b"".join([*frames, line])  # one chunk: one message through the proxy

        async def lines() -> AsyncIterator[bytes]:
            backlog = list(job.events)
            listener: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            job.listeners.add(listener)
            try:
                for event in backlog:
                    yield encode(event)
                    if event["type"] in TERMINAL_EVENTS:
                        return
                while True:
                    try:
                        event = await asyncio.wait_for(listener.get(), interval)
                    except TimeoutError:
                        event = {"type": "heartbeat", "job": job.id}
                    yield encode(event)
                    if event["type"] in TERMINAL_EVENTS:
                        return
            finally:
                job.listeners.discard(listener)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    # -- health ------------------------------------------------------------------------------

    async def _replica_count(self) -> dict[str, Any]:
        """Replica states from Serve's controller (cached: a blocking call to another actor)."""
        at, cached = self._status
        if time.monotonic() - at < STATUS_TTL_S and cached:
            return cached
        context = serve.get_replica_context()

        def read() -> dict[str, Any]:
            status = serve.status()
            app = status.applications.get(context.app_name)
            if app is None:
                return {}
            deployment = app.deployments.get("EngineReplica")
            return dict(deployment.replica_states) if deployment is not None else {}

        try:
            states = await asyncio.wait_for(asyncio.to_thread(read), 5.0)
        except Exception as exc:
            log.warning("could not read the replica states from Serve: %r", exc)
            states = cached
        self._status = (time.monotonic(), states)
        return states

    async def health(self, _request: Request) -> Response:
        states = await self._replica_count()
        running = int(states.get("RUNNING", 0))
        now = time.monotonic()
        replicas = [seen.report(now) for seen in self.seen.values()]
        models = sorted({m for seen in self.seen.values() for m in seen.models})
        in_flight = [job for job in self.jobs.values() if not job.finished]
        return JSONResponse({
            "status": "ok",
            "backend": "ray",
            "queue": {"queued": sum(1 for j in in_flight if j.state == "queued"),
                      "running": sum(1 for j in in_flight if j.state == "running"),
                      "completed": self.completed},
            "cluster": {
                "replicas": replicas,
                "replica_states": states,
                "running_replicas": running,
                "min_replicas": self.settings.min_replicas,
                "max_replicas": self.settings.max_replicas,
                "jobs_per_replica": self.settings.jobs_per_replica,
                "models_per_replica": self.settings.models_per_replica,
                "capacity": max(1, running) * self.settings.jobs_per_replica,
            },
            "models": [{"file": m, "tier": "device"} for m in models],
            "folders": {kind: str(path) for kind, path in self.folders.items()},
            "architectures": list(RUNNABLE_ARCHITECTURES),
            "uptime_s": round(now - self.started, 3),
        })  # fmt: skip

    # -- files -------------------------------------------------------------------------------

    def _folder(self, kind: Any) -> Any:
        if not isinstance(kind, str) or kind not in self.folders:
            raise EngineError(ErrorCode.INVALID_RECIPE, "kind must be 'lora', 'model' or 'embedding'")
        return self.folders[kind]

    async def inspect(self, request: Request) -> Response:
        body = await self._body(request)
        kind = body.get("kind")
        root = self._folder(kind)
        relative = body.get("path")
        if not isinstance(relative, str):
            raise EngineError(ErrorCode.UNKNOWN_FILE, "'path' must be a path relative to the folder")
        path = resolve_within(root, relative, allow_dir=kind == "model")
        info = await asyncio.to_thread(inspect_file, path, relative_to=root.resolve())
        return JSONResponse(info.to_json())

    async def files(self, request: Request) -> Response:
        kind = request.query_params.get("kind")
        root = self._folder(kind)
        entries = await asyncio.to_thread(list_files, root, include_pipeline_folders=kind == "model")
        return JSONResponse({"files": [{"path": e.path, "size_bytes": e.size_bytes} for e in entries]})

    async def _downloads(self) -> DownloadManager:
        if not self._downloads_started:
            self._downloads_started = True
            await self.downloads.start()
        return self.downloads

    async def start_download(self, request: Request) -> Response:
        body = await self._body(request)
        try:
            wanted = DownloadRequest.from_json(body)
        except (TypeError, ValueError) as exc:
            raise EngineError(ErrorCode.INVALID_RECIPE, f"the download request is malformed: {exc}") from exc
        status = (await self._downloads()).submit(wanted)
        return JSONResponse(status.to_json(), status_code=202)

    async def download_status(self, _request: Request, id: str) -> Response:
        return JSONResponse((await self._downloads()).status(id).to_json())

    async def cancel_download(self, _request: Request, id: str) -> Response:
        return JSONResponse((await self._downloads()).cancel(id).to_json())
