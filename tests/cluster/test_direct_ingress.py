"""Ray's direct ingress on a fixed port: the bot talks to the ingress replica past Serve's proxy.

The operator's setting (README, "Many GPUs on Ray Serve", Latency; deploy/serve.yaml): Ray's
processes start with ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1`` and a direct-ingress port range of one
port, ``RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT=P`` / ``..._MAX_HTTP_PORT=P+1`` (Serve hands out
``range(min, max)``), and ``RAY_SERVE_PORT_QUARANTINE_S=0`` so a restarted ingress gets ``P``
back at once. The bot's ``engine_url`` is then ``http://<head>:P``: nothing to discover. These
tests start their own local Ray with that environment (Ray's processes read it at start), and
put it back as it was at the end so the other cluster modules run on the default proxy.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.registry import Registry
from engine.client import EngineClient
from sandbox.discord_double import DiscordDouble
from tests.bot.conftest import FAST, png_parameters, seed_registry
from tests.bot.test_imagine_flow import is_result
from tests.bot.test_process import wait_commands
from tests.bot_process import end_process, spawn_bot
from tests.cluster.test_serve import health, recipe, until
from tests.cluster_ray import cluster_args, deploy, direct_ingress_env, free_port, local_ray
from tests.conftest import ENGINE_TOKEN


@pytest.fixture(scope="module")
def fixed_port() -> Iterator[int]:
    port = free_port()
    settings = direct_ingress_env(port)
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield port
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def direct_cluster(
    fixed_port: int, demo_assets: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(the direct-ingress URL on the fixed port, the proxy's URL), one replica."""
    with local_ray():
        proxy_port = free_port()
        # tests.cluster_ray.deploy returns the port Serve's controller lists for the ingress.
        yield (
            deploy(direct_args(tmp_path_factory, demo_assets), proxy_port),
            f"http://127.0.0.1:{proxy_port}",
        )


def direct_args(
    tmp_path_factory: pytest.TempPathFactory, demo_assets: Any, **overrides: Any
) -> dict[str, Any]:
    return cluster_args(tmp_path_factory.mktemp("direct"), models=str(demo_assets.model_root),
                        loras=str(demo_assets.lora_root), token=ENGINE_TOKEN, min_replicas=1,
                        max_replicas=1, ingress_on_head=True, **overrides)  # fmt: skip


def test_serve_puts_the_ingress_on_the_operator_s_fixed_port(
    direct_cluster: tuple[str, str], fixed_port: int
) -> None:
    assert direct_cluster[0] == f"http://127.0.0.1:{fixed_port}"


async def test_the_bot_runs_a_job_through_the_direct_port_and_the_proxy_still_answers(
    direct_cluster: tuple[str, str], fixed_port: int, demo_assets: Any, tmp_path: Path
) -> None:
    direct, proxy = direct_cluster
    async with DiscordDouble() as double:
        guild = double.add_guild("Studio")
        channel = double.add_channel(guild, "studio")
        alice = double.add_member(guild, "alice")
        db = tmp_path / "atelier.sqlite3"
        async with (
            await Registry.open(db) as registry,
            EngineClient(direct, token=ENGINE_TOKEN) as engine,
        ):
            await seed_registry(registry, guild.id, engine, demo_assets, guild.owner_id)
        log = tmp_path / "bot.log"
        bot = spawn_bot(
            double,
            tmp_path,
            direct,
            log=log,
            ATELIER_ENGINE_BACKEND="ray",
            ATELIER_STATUS_INTERVAL="0.3",
        )
        try:
            await wait_commands(double)
            handle = await double.slash(
                alice, channel, "imagine", {**FAST, "prompt": "direct", "seed": 91}
            )
            await handle.wait_followup(within=30)

            async def posted() -> bool:
                return any(is_result(m) for m in double.messages(channel))

            await until(posted, 60)
            results = [m for m in double.messages(channel) if is_result(m)]
            assert len(results) == 1, [m.content for m in double.messages(channel)]
            assert "Seed: 91" in png_parameters(results[0].attachments[0].data)
        finally:
            end_process(bot)
        text = log.read_text()
        assert "Traceback" not in text and "does not answer as a Ray Serve cluster" not in text, (
            text
        )
    # The proxy path (the default) is still there on the same cluster.
    assert (await health(proxy))["backend"] == "ray"


async def test_a_killed_ingress_comes_back_on_the_same_port(
    direct_cluster: tuple[str, str], demo_assets: Any
) -> None:
    """Serve replaces a dead ingress; with the quarantine off it binds the one port again.

    The job records live in the ingress, so jobs it held are lost with it either way (the bot
    retries them, as through the proxy); what matters here is that ``engine_url`` stays valid.
    """
    import ray

    direct, _ = direct_cluster
    await health(direct)
    (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if a["name"].startswith("SERVE_REPLICA::atelier#Ingress#")]  # fmt: skip
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    started = time.monotonic()

    async def answers_again() -> bool:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{direct}/health") as response,
            ):
                return response.status == 200
        except aiohttp.ClientError:
            return False

    await asyncio.sleep(1.0)  # the dead actor's socket closes first
    await until(answers_again, 90, every=0.5)
    back_after = time.monotonic() - started
    async with EngineClient(direct, token=ENGINE_TOKEN, inline_images=True) as client:
        await client.wait_ready(60)
        (image,) = await asyncio.wait_for(
            client.run("after-restart", recipe(demo_assets.models["sd15"], seed=4)), 60
        )
    assert "Seed: 4" in png_parameters(image)
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith("SERVE_REPLICA::atelier#Ingress#")]  # fmt: skip
    assert names and name not in names, (name, names)  # a new ingress replica, on the same port
    print(f"ingress back on its port after {back_after:.1f} s")


async def test_a_redeployed_ingress_comes_back_on_the_same_port(
    direct_cluster: tuple[str, str],
    fixed_port: int,
    demo_assets: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A ``serve deploy`` with changed args replaces the ingress: Serve starts the new one while
    the old one stops, so with Ray's 30 s drain (or a quarantine) the one port is still taken and
    the update fails after three tries. The documented setting turns both off."""
    direct, proxy = direct_cluster
    redeployed = deploy(
        direct_args(tmp_path_factory, demo_assets, heartbeat_interval_s=2.0),
        int(proxy.rsplit(":", 1)[1]),
    )
    assert redeployed == direct == f"http://127.0.0.1:{fixed_port}"
    async with EngineClient(direct, token=ENGINE_TOKEN, inline_images=True) as client:
        await client.wait_ready(60)
        (image,) = await asyncio.wait_for(
            client.run("after-redeploy", recipe(demo_assets.models["sd15"], seed=6)), 60
        )
    assert "Seed: 6" in png_parameters(image)
