"""The model cache (budgets, tiers, LRU, freeing) and reading ahead of the next job."""

from __future__ import annotations

import dataclasses
import gc
import weakref

import pytest

from engine.generate import Generator
from engine.model_cache import ModelCache, model_bytes
from engine.pipelines import load_pipeline
from engine.protocol import LoraRef, Recipe

SD15 = Recipe(model="sd15-tiny.safetensors", prompt="a lighthouse", steps=1, width=64, height=64)


@pytest.fixture(scope="module")
def paths(demo_assets) -> dict[str, tuple]:
    from engine.inspect import inspect_file

    found = {}
    for arch, relative in demo_assets.models.items():
        path = demo_assets.model_root / relative
        found[arch] = (path, inspect_file(path).sha256, relative)
    return found


def test_the_device_budget_moves_the_oldest_model_to_the_host_and_the_host_budget_frees_it(paths) -> None:
    sd15_path, sd15_key, sd15_file = paths["sd15"]
    xl_path, xl_key, xl_file = paths["sdxl"]
    loader = lambda p: load_pipeline(p)  # noqa: E731
    probe = ModelCache(loader, device="cpu")
    sizes = {}
    for arch, (path, key, file) in paths.items():
        entry, source = probe.get(path, key, file)
        sizes[arch] = entry.size_bytes
        assert source == "disk" and entry.size_bytes == model_bytes(entry.pipe) > 0
    del probe, entry
    gc.collect()
    # Room for the larger model on the device and in the host tier, not for two in either.
    room = max(sizes.values())
    cache = ModelCache(loader, device="cpu", device_budget=room, host_budget=room, two_tiers=True)
    sd15, source = cache.get(sd15_path, sd15_key, sd15_file)
    assert source == "disk"
    xl, source = cache.get(xl_path, xl_key, xl_file)
    assert source == "disk" and (sd15.tier, xl.tier) == ("host", "device")
    assert cache.used("device") <= room and cache.used("host") <= room
    back, source = cache.get(sd15_path, sd15_key, sd15_file)
    assert back is sd15 and source == "host" and cache.disk_loads == 2
    assert (sd15.tier, xl.tier) == ("device", "host")
    report = {(m["file"], m["tier"]) for m in cache.report()}
    assert report == {(sd15_file, "device"), (xl_file, "host")}
    # No host room left: the least recently used model is freed, for real.
    cache.host_budget = 0
    old = weakref.ref(xl.pipe)
    del xl
    cache.get(sd15_path, sd15_key, sd15_file)
    cache._make_room("host", 0, keep=sd15_key)
    gc.collect()
    assert old() is None and not cache.holds(xl_key) and cache.evictions == 1


def test_each_model_keeps_its_own_lora_state(demo_assets) -> None:
    generator = Generator(demo_assets.model_root, demo_assets.lora_root)
    lora = dataclasses.replace(SD15, loras=(LoraRef("sd15/watercolor.safetensors", 0.7),))
    xl = Recipe(model="sdxl-tiny", prompt="a lighthouse", steps=1, width=64, height=64,
                loras=(LoraRef("sdxl/watercolor-xl.safetensors", 0.7),))  # fmt: skip
    first = generator.run(lora).images[0]
    generator.run(xl)
    again = generator.run(lora)
    assert again.timings["lora_apply"] == 0.0 and again.timings["model_source"] == "cached"
    assert again.images[0] == first
    assert generator.run(xl).timings["lora_apply"] == 0.0


def test_prefetch_reads_the_next_jobs_files_and_model(demo_assets) -> None:
    generator = Generator(demo_assets.model_root, demo_assets.lora_root)
    recipe = dataclasses.replace(
        SD15, loras=(LoraRef("sd15/watercolor.safetensors", 0.5), LoraRef("sd15/pixel-art.safetensors", 0.5))
    )
    generator.prefetch(recipe).result(timeout=120)
    assert generator.loras.loads == 2 and generator.loras.prefetched == 2
    assert generator.models.holds(generator.inspect(demo_assets.model_root / SD15.model).sha256)
    timings = generator.run(recipe).timings
    assert timings["model_source"] == "cached" and generator.models.disk_loads == 1
    assert generator.loras.loads == 2  # nothing read again: the switch was only the apply
    # A recipe that cannot run is not the prefetcher's to report: the job will say why.
    generator.prefetch(dataclasses.replace(SD15, model="missing.safetensors")).result(timeout=30)
