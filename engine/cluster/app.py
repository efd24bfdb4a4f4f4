"""``build``: the Serve application a ``serve`` config names (``engine.cluster.app:build``).

Two deployments: ``EngineReplica`` (one per GPU, autoscaled between ``min_replicas`` and
``max_replicas`` on the jobs in flight) and ``Ingress`` (one, the HTTP face). Their resources
and autoscaling come from the config's ``args`` (:class:`~engine.cluster.settings.ClusterSettings`),
so one file says everything about a deployment.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from engine.cluster.ingress import Ingress
from engine.cluster.replica import EngineReplica
from engine.cluster.settings import ClusterSettings

#: The resource Ray gives the head node (ray._common.constants.HEAD_NODE_RESOURCE_NAME, private).
HEAD_NODE_RESOURCE = "node:__internal_head__"

#: The application's name, and the name of its replica deployment (what /health counts).
APP_NAME = "atelier"


def build(args: dict[str, Any]) -> Application:
    """The application; ``args`` are checked here, so a bad config fails ``serve deploy``."""
    settings = ClusterSettings.from_args(args)
    autoscaling = {
        "min_replicas": settings.min_replicas,
        "max_replicas": settings.max_replicas,
        "initial_replicas": settings.min_replicas,
        "target_ongoing_requests": settings.target_jobs_per_replica,
        "upscale_delay_s": settings.upscale_delay_s,
        "downscale_delay_s": settings.downscale_delay_s,
        "metrics_interval_s": 1.0,
        "look_back_period_s": 2.0,
    }
    replica = serve.deployment(
        EngineReplica,
        name="EngineReplica",
        ray_actor_options={"num_gpus": settings.gpus_per_replica, "num_cpus": settings.cpus_per_replica},
        # Twice what the bot sends a replica: Serve treats a replica at this limit as busy and
        # sends its model's next job to another replica (a model load, an eviction), while the
        # bot never keeps more than jobs_per_replica per running replica in flight anyway.
        max_ongoing_requests=2 * settings.jobs_per_replica,
        autoscaling_config=autoscaling if settings.max_replicas > settings.min_replicas else None,
        num_replicas=None if settings.max_replicas > settings.min_replicas else settings.min_replicas,
        # A replica killed mid-job is replaced by Serve; its health check is the actor's.
        health_check_period_s=2.0,
        graceful_shutdown_timeout_s=30.0,
    )
    ingress = serve.deployment(
        Ingress,
        name="Ingress",
        num_replicas=1,  # the job records live in it (see engine.cluster.ingress)
        ray_actor_options={
            "num_cpus": 0.1 if settings.gpus_per_replica < 1 else 0.5,
            # Ray's built-in resource of the head node: a sliver of it pins the actor there.
            **({"resources": {HEAD_NODE_RESOURCE: 0.001}} if settings.ingress_on_head else {}),
        },
        max_ongoing_requests=10_000,
    )
    return ingress.bind(replica.bind(dict(args)), dict(args))
