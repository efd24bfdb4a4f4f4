"""The weight patcher and its policy: exact restores, order-free switching, the cost model."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from engine.cost_model import CostModel
from engine.generate import Generator
from engine.patcher import PATCHED, UNFUSED, StackWork
from engine.protocol import LoraRef, Recipe
from tests.engine._images import pixels

SD15 = Recipe(model="sd15-tiny.safetensors", prompt="a lighthouse", steps=2, width=64, height=64, seed=4)
STACKS = {
    "a": (("sd15/watercolor.safetensors", 0.8), ("sd15/pixel-art.safetensors", 0.5)),
    "b": (("sd15/captain-nova.safetensors", 1.0), ("sd15/twin-kohya.safetensors", -0.4)),
    "c": (("sd15/pixel-art.safetensors", 1.2), ("sd15/captain-nova.safetensors", 0.3),
          ("sd15/watercolor.safetensors", 0.2)),
}  # fmt: skip


def stacked(name: str) -> Recipe:
    return dataclasses.replace(SD15, loras=tuple(LoraRef(f, w) for f, w in STACKS[name]))


def _weights(generator: Generator) -> dict[str, torch.Tensor]:
    pipe = generator.current.pipe
    return {
        f"{component}.{name}": tensor.detach().clone()
        for component in ("unet", "text_encoder")
        for name, tensor in getattr(pipe, component).state_dict().items()
    }


@pytest.mark.parametrize("mode", [PATCHED, UNFUSED])
def test_patch_then_restore_leaves_every_weight_bit_identical(demo_assets, mode: str) -> None:
    generator = Generator(demo_assets.model_root, demo_assets.lora_root, lora_mode=mode)
    generator.run(SD15)
    before = _weights(generator)
    for name in ("a", "b", "c", "a"):
        generator.run(stacked(name))
    if mode == PATCHED:
        assert any(not torch.equal(before[k], v) for k, v in _weights(generator).items())
    generator.run(SD15)
    after = _weights(generator)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])][:3]
    assert not generator.current.patcher._hooks


@pytest.mark.parametrize("mode", [PATCHED, UNFUSED])
def test_switching_between_three_stacks_in_any_order_gives_fresh_images(demo_assets, mode: str) -> None:
    fresh = {}
    for name in STACKS:
        generator = Generator(demo_assets.model_root, demo_assets.lora_root, lora_mode=mode)
        fresh[name] = pixels(generator.run(stacked(name)).images[0])
    assert not np.array_equal(fresh["a"], fresh["b"])
    generator = Generator(demo_assets.model_root, demo_assets.lora_root, lora_mode=mode)
    for order in itertools.permutations(STACKS):
        for name in order:
            assert np.array_equal(pixels(generator.run(stacked(name)).images[0]), fresh[name]), (order, name)


def test_the_same_stack_again_costs_nothing_and_the_choice_is_recorded(demo_assets) -> None:
    generator = Generator(demo_assets.model_root, demo_assets.lora_root)
    generator.run(SD15)
    first = generator.run(stacked("a")).timings
    assert first["lora_path"] in (PATCHED, UNFUSED) and first["lora_apply"] > 0
    assert "s" in first["lora_path_reason"]  # an estimate in seconds, or why none
    again = generator.run(dataclasses.replace(stacked("a"), prompt="another prompt", seed=9)).timings
    assert again["lora_apply"] == 0.0 and "already applied" in again["lora_path_reason"]
    reordered = dataclasses.replace(SD15, loras=tuple(reversed(stacked("a").loras)))
    assert generator.run(reordered).timings["lora_apply"] == 0.0  # order is not a new stack


def test_the_first_lora_job_measures_the_layers_and_later_ones_are_costed(demo_assets) -> None:
    generator = Generator(demo_assets.model_root, demo_assets.lora_root)
    generator.run(SD15)  # measures every layer's input positions on the way
    timings = generator.run(stacked("b")).timings
    assert "not measured" not in timings["lora_path_reason"]
    assert timings["lora_patch_estimate_s"] > 0 and timings["lora_unfused_estimate_s"] > 0
    snapshot = generator.costs.snapshot()
    assert snapshot["patch_macs_per_s"] > 0 and snapshot["bypass_macs_per_s"] > 0


def _work(patch_macs: float, per_call: float) -> StackWork:
    return StackWork(int(patch_macs), per_call, 0.0, layers=10, measured=True)


def test_the_cost_model_picks_the_cheaper_path() -> None:
    costs = CostModel(patch_rate=1e9, bypass_rate=1e9)
    # Patching costs 1 s; running unfused costs 0.1 s per model call.
    short = costs.decide(_work(1e9, 1e8), steps=4, sampler="Euler", changed=True)
    long = costs.decide(_work(1e9, 1e8), steps=30, sampler="Euler", changed=True)
    assert (short.mode, long.mode) == (UNFUSED, PATCHED)
    assert short.unfused_s == pytest.approx(0.4) and long.unfused_s == pytest.approx(3.0)
    assert "0.400 s" in short.reason and "30 model calls" in long.reason
    heun = costs.decide(_work(1e9, 1e8), steps=8, sampler="Heun", changed=True)
    assert heun.mode == PATCHED and "16 model calls" in heun.reason  # two calls per step
    assert costs.decide(_work(1e9, 1e8), steps=4, sampler="Euler", changed=True, forced=PATCHED).mode == PATCHED
    unmeasured = StackWork(10**9, 0.0, 0.0, layers=10, measured=False)
    assert costs.decide(unmeasured, steps=1, sampler="Euler", changed=True).mode == PATCHED


def test_real_jobs_correct_the_predictions() -> None:
    costs = CostModel(patch_rate=1e9, bypass_rate=1e9)
    costs.record_patch(predicted_s=1.0, seconds=2.0)  # patches here take twice the estimate
    costs.record_unfused(predicted_s=0.5, seconds=0.5)
    patch_s, unfused_s = costs.predict(_work(1e9, 1e8), steps=4, sampler="Euler")
    assert (patch_s, unfused_s) == (pytest.approx(2.0), pytest.approx(0.4))
    costs.record_patch(predicted_s=1.0, seconds=1.0)  # a running ratio, not the last one alone
    assert costs.patch_correction == pytest.approx(1.5)


def test_per_layer_overheads_and_restores_count() -> None:
    costs = CostModel(patch_rate=1e12, bypass_rate=1e12, patch_layer_s=1e-3, hook_layer_s=1e-4, copy_element_s=1e-9)
    work = StackWork(10**6, 1e6, 0.0, layers=100, measured=True, low_rank_layers=100,
                     restore_elements={"patched": 0, "unfused": 10**9})  # fmt: skip
    patch_s, unfused_s = costs.predict(work, steps=2, sampler="Euler")
    assert patch_s == pytest.approx(0.1, rel=1e-3)  # 100 layer launches
    # hooks per call, restores, and building the 100 hooks (a patch's per-layer cost stands in
    # until a real switch onto the unfused path is measured)
    assert unfused_s == pytest.approx(2 * 100 * 1e-4 + 1.0 + 100 * 1e-3, rel=1e-3)
    costs.record_unfused_switch(layers=100, restore_elements=10**9, seconds=1.5)  # 0.5 s beyond the restores
    assert costs.predict(work, steps=2, sampler="Euler")[1] == pytest.approx(0.02 + 1.0 + 0.5, rel=1e-3)
