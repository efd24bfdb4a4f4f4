"""The cluster application's settings: the ``args`` of a ``serve`` config, checked once.

Plain Python (no Ray, no torch), so a wrong config is refused with a message that names the
key before any replica starts.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.auth import check_token
from engine.config import DEFAULT_DOWNLOAD_HOSTS, parse_size

#: The runner every replica builds unless a test names another (``module:callable``).
GENERATOR = "generator"


@dataclass(frozen=True)
class ClusterSettings:
    """What every replica and the ingress are built from (the ``args`` of ``deploy/serve.yaml``).

    ``models``/``loras`` must be the same shared folders on every node (see the README's
    "Many GPUs" section): a replica reads the files a job names there, and the ingress lists,
    inspects and downloads into them.
    """

    models: Path
    loras: Path
    #: Read from ``ATELIER_ENGINE_TOKEN`` in the replica's environment unless given here.
    token: str = dataclasses.field(default="", repr=False)
    #: Base models each replica keeps; Serve's multiplexing evicts the least recently used.
    models_per_replica: int = 2
    #: Replicas, and the GPUs (fractional on a CPU, for tests) and CPUs each one takes.
    min_replicas: int = 1
    max_replicas: int = 1
    gpus_per_replica: float = 1.0
    cpus_per_replica: float = 1.0
    #: Jobs a replica holds at once (its queue feeds the next while one denoises).
    jobs_per_replica: int = 2
    #: Autoscaling: the in-flight jobs per replica Serve aims for, and its delays.
    target_jobs_per_replica: float = 1.0
    upscale_delay_s: float = 10.0
    downscale_delay_s: float = 300.0
    #: The generator's options (as ``python -m engine serve`` takes them).
    device: str = "auto"
    dtype: str = "auto"
    model_device_budget: int | None = None
    model_host_budget: int | None = None
    max_batch_images: int = 8
    allow_downloads: bool = False
    download_hosts: tuple[str, ...] = DEFAULT_DOWNLOAD_HOSTS
    #: ``generator`` (the real engine) or ``module:callable`` building a runner (tests).
    runner: str = GENERATOR
    runner_args: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    heartbeat_interval_s: float = 5.0
    #: Keep the ingress on the head node, so Ray's direct ingress (README, "Latency") has one
    #: address the bot can be given: the head's, at the operator's fixed port.
    ingress_on_head: bool = False

    @classmethod
    def from_args(cls, args: Mapping[str, Any], env: Mapping[str, str] | None = None) -> ClusterSettings:
        env = os.environ if env is None else env
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(
                f"the cluster config has unknown key(s) {', '.join(unknown)}; the keys are "
                + ", ".join(sorted(known))
            )
        for key in ("models", "loras"):
            if not args.get(key):
                raise ValueError(f"the cluster config needs '{key}': the shared folder every node sees")
        values: dict[str, Any] = dict(args)
        values["models"], values["loras"] = Path(args["models"]), Path(args["loras"])
        for key in ("model_device_budget", "model_host_budget"):
            if isinstance(values.get(key), str):
                values[key] = parse_size(values[key])
        if "download_hosts" in values:
            values["download_hosts"] = tuple(values["download_hosts"])
        token = str(values.get("token") or env.get("ATELIER_ENGINE_TOKEN", ""))
        if not token:
            raise ValueError(
                "the cluster has no engine token: set ATELIER_ENGINE_TOKEN in every node's "
                "environment (a Kubernetes Secret in the RayService manifest), the value the bot has"
            )
        values["token"] = check_token(token, source="the cluster config")
        settings = cls(**values)
        if not 1 <= settings.min_replicas <= settings.max_replicas:
            raise ValueError("the cluster config needs 1 <= min_replicas <= max_replicas")
        if settings.models_per_replica < 1 or settings.jobs_per_replica < 1:
            raise ValueError("models_per_replica and jobs_per_replica must be at least 1")
        return settings
