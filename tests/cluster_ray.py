"""A local Ray on loopback with the Atelier Serve app on it, for the cluster tests and bench.

Lean on purpose (the CI machine has two cores): no dashboard, replicas that take a tenth of a
CPU and no GPU, and everything shut down at the end so no raylet outlives its test module.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TOKEN = "cluster-test-token-0123456789"
STANDIN = "tests.cluster_standin:StandinRunner"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cluster_args(folder: Path, **overrides: Any) -> dict[str, Any]:
    """The ``args`` of a serve config for CPU replicas (the stand-in runner unless overridden)."""
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "loras").mkdir(parents=True, exist_ok=True)
    args: dict[str, Any] = {
        "models": str(folder / "models"), "loras": str(folder / "loras"), "token": TOKEN,
        "gpus_per_replica": 0, "cpus_per_replica": 0.1, "min_replicas": 2, "max_replicas": 2,
        "runner": STANDIN, "runner_args": {"seconds_per_step": 0.1},
        "heartbeat_interval_s": 1.0,
    }  # fmt: skip
    args.update(overrides)
    return args


@contextlib.contextmanager
def local_ray(num_cpus: int = 2) -> Iterator[None]:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=num_cpus, num_gpus=0, include_dashboard=False, log_to_driver=False,
             configure_logging=False, namespace="atelier-tests")  # fmt: skip
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            from ray import serve

            serve.shutdown()
        ray.shutdown()


def deploy(args: dict[str, Any], port: int) -> str:
    """Run the app (replacing one already there) and return its HTTP address."""
    from ray import serve

    from engine.cluster.app import APP_NAME, build

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    direct = os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1"
    before = _ingress_targets() if direct else set()
    serve.run(build(args), name=APP_NAME, route_prefix="/", blocking=False)
    if not direct:
        return f"http://127.0.0.1:{port}"
    # Ray's direct ingress (set before Ray started, as `python -m tests.bench.cluster
    # --direct-ingress` does): the ingress replica's own HTTP port, past Serve's proxy.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        targets = _ingress_targets()
        if len(targets) == 1 and targets != before:
            return f"http://127.0.0.1:{next(iter(targets))}"
        time.sleep(0.2)
    raise TimeoutError("the ingress replica got no direct-ingress port within 90 s")


def _ingress_targets() -> set[int]:
    """Ports of the app's ingress replicas, from Serve's controller (direct ingress only)."""
    import ray
    from ray.serve.context import _get_global_client

    from engine.cluster.app import APP_NAME

    try:
        groups = ray.get(_get_global_client()._controller.get_target_groups.remote(APP_NAME))
    except ray.exceptions.RayTaskError:  # no such app yet
        return set()
    return {t.port for g in groups if g.protocol == "HTTP" for t in g.targets}
