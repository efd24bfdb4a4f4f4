"""The cluster's config files and settings, and how the bot reads a cluster (no Ray started)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from bot.jobs import EngineLink, EnginePool
from bot.operator.config import BotConfig, ConfigError
from engine.client import EngineClient
from engine.cluster.app import build
from engine.cluster.settings import ClusterSettings

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "a-cluster-token-of-enough-length"


def test_the_serve_config_is_valid_and_builds_the_app() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    assert app.import_path == "engine.cluster.app:build"
    assert isinstance(build({**app.args, "token": TOKEN}), Application)
    settings = ClusterSettings.from_args(app.args, env={"ATELIER_ENGINE_TOKEN": TOKEN})
    assert settings.gpus_per_replica == 1 and settings.min_replicas < settings.max_replicas


def test_the_rayservice_manifest_carries_the_serve_config() -> None:
    manifest = yaml.safe_load((ROOT / "deploy" / "rayservice.yaml").read_text())
    assert manifest["kind"] == "RayService"
    served = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert served == yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())


def test_cluster_settings_say_what_to_fix() -> None:
    base = {"models": "/models", "loras": "/loras"}
    with pytest.raises(ValueError, match="ATELIER_ENGINE_TOKEN"):
        ClusterSettings.from_args(base, env={})
    with pytest.raises(ValueError, match="unknown key.*max_replica\\b"):
        ClusterSettings.from_args({**base, "max_replica": 2}, env={"ATELIER_ENGINE_TOKEN": TOKEN})
    with pytest.raises(ValueError, match="min_replicas <= max_replicas"):
        ClusterSettings.from_args({**base, "min_replicas": 3, "max_replicas": 2}, env={"ATELIER_ENGINE_TOKEN": TOKEN})
    with pytest.raises(ValueError, match="'loras'"):
        ClusterSettings.from_args({"models": "/models"}, env={"ATELIER_ENGINE_TOKEN": TOKEN})


def test_the_ray_backend_needs_one_cluster_address() -> None:
    with pytest.raises(ConfigError, match="ATELIER_ENGINE_BACKEND"):
        BotConfig.load({"ATELIER_ENGINE_BACKEND": "kubernetes"})
    with pytest.raises(ConfigError, match="Ray Serve cluster's HTTP address"):
        BotConfig.load({"ATELIER_ENGINE_BACKEND": "ray"})
    config = BotConfig.load({"ATELIER_ENGINE_BACKEND": "ray", "ATELIER_ENGINE_URL": "http://head:8000"})
    assert config.engine_backend == "ray" and config.external_engines == ("http://head:8000",)
    assert BotConfig.load({}).engine_backend == "process"


async def test_a_cluster_is_one_engine_as_deep_as_its_replicas_with_no_affinity_of_its_own() -> None:
    health = {
        "status": "ok", "backend": "ray", "loaded_model": "a.safetensors",
        "models": [{"file": "a.safetensors", "tier": "device"}],
        "cluster": {"capacity": 6, "replicas": [{"id": "r1", "load": 2, "models": ["a.safetensors"]}]},
    }  # fmt: skip
    async with EngineClient("http://cluster:8000") as cluster, EngineClient("http://gpu:7861") as single:
        pool = EnginePool([EngineLink(cluster, cluster=True), EngineLink(single)], depth=2)
        for slot in pool.slots:
            pool._read_models(slot, health)
            slot.healthy = True
        cluster_view, single_view = pool.views()
        assert (cluster_view.free_units, cluster_view.models, cluster_view.model) == (6, frozenset(), None)
        assert (single_view.free_units, single_view.models) == (2, frozenset({"a.safetensors"}))
        assert pool.slots[0].replicas[0]["id"] == "r1" and pool.slots[0].name == "Ray Serve cluster"


def test_the_bot_never_imports_ray() -> None:
    """The bot reaches a cluster over HTTP: no bot module imports Ray (nor engine.cluster)."""
    import ast

    offenders = []
    for path in sorted((ROOT / "bot").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "ray" or n.startswith("engine.cluster")]
    assert offenders == []


def test_the_direct_ingress_setting_the_docs_give_is_the_one_the_tests_run() -> None:
    """README, deploy/serve.yaml and deploy/rayservice.yaml list tests.cluster_ray's variables."""
    from tests.cluster_ray import direct_ingress_env

    readme = (ROOT / "README.md").read_text()
    serve_yaml = (ROOT / "deploy" / "serve.yaml").read_text()
    rayservice = (ROOT / "deploy" / "rayservice.yaml").read_text()
    for key, value in direct_ingress_env(8100).items():
        assert f"{key}={value}" in readme and f"{key}={value}" in serve_yaml, key
        assert f"{{name: {key}, value: \"{value}\"}}" in rayservice, key
    served = yaml.safe_load(serve_yaml)["applications"][0]["args"]
    assert served["ingress_on_head"] is False  # opt-in: the proxy stays the default
    assert ClusterSettings.from_args({**served, "ingress_on_head": True}, env={"ATELIER_ENGINE_TOKEN": TOKEN}).ingress_on_head
