"""Engine runtime benchmark: ``python -m tests.bench.runtime`` prints one JSON object.

Measured in one run, on this machine's CPU, with the **full-size SD 1.5 architecture**
(random weights from the demo builder, nothing downloaded; ``--size tiny`` for a smoke test)
at a small size and few steps, and real-shaped LoRAs: rank 32 kohya LoCon on every linear
and conv layer kohya's LoCon touches (Transformer2DModel, ResnetBlock2D, Down/Upsample2D in
the UNet; CLIPAttention/CLIPMLP in the text encoder), fp16 as kohya saves them.

- ``step_ms``: one denoising step of the base model (CFG, so a UNet batch of 2), median;
- ``lora_step_ratio``: the step with a 3-LoRA stack on the engine's patched path over the
  base step (target <= 1.02), with ``lora_step_ratio_unfused`` beside it; alternating runs;
- ``switch_ms_cached``: changing to a different 3-LoRA stack whose files are in the LoRA
  cache (read + apply as the engine times them, patched path), and ``switch_ms_prefetched``:
  to one whose files were read by the prefetch thread while another job denoised (target:
  both below ``step_ms``);
- ``policy_regret_short`` / ``policy_regret_long``: for a 4-step and a 30-step job that start
  with the other stack applied, the time of the path the engine's cost model chose over the
  faster of the two paths, both measured directly (target <= 1.05 each);
- ``model_switch_speedup``: loading the model from disk over getting it back from the model
  cache after another model was used (target >= 5; on a CPU the device *is* host RAM, so
  "getting it back" moves nothing: see ``tests/bench/gpu.py`` for the host-tier copy);
- ``batch_speedup``: four one-image jobs over one four-image job (reported).

The full build peaks near 9 GB of RAM and is done in a child process first (reused from
``--out`` when present); the measuring process holds the fp32 model, a clean copy of every
patched weight and six LoRA files, about 9 GB. Run it alone, ``nice -n 10``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TARGETS = {
    "lora_step_ratio": "<= 1.02",
    "switch_ms_cached": "< step_ms",
    "switch_ms_prefetched": "< step_ms",
    "policy_regret_short": "<= 1.05",
    "policy_regret_long": "<= 1.05",
    "model_switch_speedup": ">= 5",
}
#: kohya's LoCon: these modules' Linear and Conv2d children are adapted.
_UNET_PARENTS = ("Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D")
_TE_PARENTS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.runtime", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--side", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--steps", type=int, default=6, help="steps of the step-time jobs (default 6)")
    parser.add_argument("--short-steps", type=int, default=4)
    parser.add_argument("--long-steps", type=int, default=30)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds for the step ratios")
    parser.add_argument("--out", type=Path, default=Path("demo-out/bench-runtime"),
                        help="where the model and LoRAs are built (reused when present)")  # fmt: skip
    return parser.parse_args(argv)


def _quiet() -> None:
    import logging

    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("peft").setLevel(logging.ERROR)


def build(out: Path, size: str) -> Any:
    """The model, built in a child process so its build-time peak is returned to the OS."""
    from sandbox.model_builder import STAMP_FILE, build_demo_assets

    if not (out / STAMP_FILE).is_file():
        code = (
            "import sys; from pathlib import Path; from sandbox.model_builder import build_demo_assets; "
            f"build_demo_assets(Path({str(out)!r}), size={size!r}, architectures=('sd15',), with_loras=False)"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
    return build_demo_assets(out, size=size, architectures=("sd15",), with_loras=False)


def locon_targets(pipe: Any) -> list[tuple[str, str, tuple[int, ...]]]:
    """(kohya key, component, weight shape) of every layer a kohya LoCon adapts; SDXL UNet
    layers under their SGM names and ``lora_te1_``/``lora_te2_``, as sd-scripts writes them."""
    import torch

    from engine.loras.keys import unet_module_to_ldm

    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    te_prefix = {"text_encoder": "lora_te1_" if sdxl else "lora_te_", "text_encoder_2": "lora_te2_"}
    found = []
    for component in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, component, None)
        if model is None:
            continue
        parents = _UNET_PARENTS if component == "unet" else _TE_PARENTS
        config = dict(model.config) if component == "unet" else {}
        for name, module in model.named_modules():
            if type(module).__name__ not in parents:
                continue
            for child_name, child in module.named_modules():
                if not child_name or not isinstance(child, torch.nn.Linear | torch.nn.Conv2d):
                    continue
                full = f"{name}.{child_name}"
                if component == "unet":
                    key = "lora_unet_" + (unet_module_to_ldm(full, config) if sdxl else full).replace(".", "_")
                else:
                    key = te_prefix[component] + ("text_model." + full.removeprefix("text_model.")).replace(".", "_")
                found.append((key, component, tuple(child.weight.shape)))
    return sorted(set(found))


def write_locons(folder: Path, targets: list[tuple[str, str, tuple[int, ...]]], count: int, rank: int) -> list[str]:
    """``count`` rank-``rank`` kohya LoCon files (fp16, alpha = rank/2, kohya metadata)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(count):
        path = folder / f"locon-{index}.safetensors"
        files.append(path.name)
        if path.is_file():
            continue
        generator = torch.Generator().manual_seed(1000 + index)
        state = {}
        for key, _component, shape in targets:
            out, inner = shape[0], shape[1]
            kernel = shape[2:]
            r = min(rank, out, inner)
            down = torch.randn((r, inner, *kernel), generator=generator) / math.sqrt(inner * math.prod(kernel))
            up = torch.randn((out, r, *((1, 1) if kernel else ())), generator=generator) * (0.02 / math.sqrt(r))
            state[f"{key}.lora_down.weight"] = down.to(torch.float16)
            state[f"{key}.lora_up.weight"] = up.to(torch.float16)
            state[f"{key}.alpha"] = torch.tensor(r / 2, dtype=torch.float16)
        sdxl = any(key.startswith("lora_te2_") for key, _, _ in targets)
        metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                    "ss_network_alpha": str(rank / 2), "ss_base_model_version": "sdxl_base_v1-0" if sdxl else "sd_v1",
                    "ss_network_args": json.dumps({"conv_dim": str(rank), "conv_alpha": str(rank / 2)})}  # fmt: skip
        save_file(state, str(path), metadata=metadata)
    return files


def _step_seconds(generator: Any, recipe: Any, sync: Any = None) -> tuple[float, dict[str, Any]]:
    """Median seconds between denoising steps of one job (the first step excluded); ``sync``
    drains an asynchronous device before each mark."""

    def mark(_done: int, _total: int) -> None:
        if sync is not None:
            sync()
        marks.append(time.perf_counter())

    marks: list[float] = []
    result = generator.run(recipe, on_step=mark)
    gaps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    return statistics.median(gaps), result.timings


def _job_seconds(generator: Any, recipe: Any, sync: Any = None) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    result = generator.run(recipe)
    if sync is not None:
        sync()
    return time.perf_counter() - started, result.timings


def second_model(assets: Any, out: Path) -> str:
    """A small second model beside the measured one, to switch to and back from."""
    import shutil

    from engine.component_configs import config_sidecar
    from sandbox.model_builder import build_demo_assets

    tiny = build_demo_assets(out, size="tiny", architectures=("sd15",), with_loras=False)
    (assets.model_root / "other").mkdir(exist_ok=True)
    other = assets.model_root / "other" / "tiny.safetensors"
    if not other.is_file():
        tiny_file = tiny.model_root / tiny.models["sd15"]
        shutil.copyfile(tiny_file, other)
        shutil.copytree(config_sidecar(tiny_file), config_sidecar(other))
    return "other/tiny.safetensors"


def run_benchmark(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch

    args = parse_args(argv)
    _quiet()
    started = time.perf_counter()
    load_before = os.getloadavg()
    assets = build(args.out.resolve(), args.size)
    other = second_model(assets, args.out.resolve().parent / "bench-runtime-tiny")
    figures = measure(assets, model=assets.models["sd15"], other_model=other, side=args.side, steps=args.steps,
                      short_steps=args.short_steps, long_steps=args.long_steps, rank=args.rank,
                      rounds=args.rounds)  # fmt: skip
    return {
        "benchmark": "runtime",
        "device": "cpu",
        "model": f"sd15 {args.size} (demo builder, random weights)",
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        **figures,
        "seconds": round(time.perf_counter() - started, 1),
    }


def measure(assets: Any, *, model: str, other_model: str, side: int, steps: int, short_steps: int,
            long_steps: int, rank: int, rounds: int, device: str = "cpu", dtype: str = "float32",
            sync: Any = None) -> dict[str, Any]:  # fmt: skip
    """Every figure of the module docstring for ``model`` on ``device`` (shared with gpu.py)."""
    from engine.generate import Generator
    from engine.protocol import LoraRef, Recipe

    generator = Generator(assets.model_root, assets.lora_root, device=device, dtype=dtype,
                          cache_max_loras=8, cache_max_bytes=8 << 30)  # fmt: skip
    base = Recipe(model=model, prompt="a lighthouse on a cliff at dusk, oil painting", negative_prompt="blurry",
                  sampler="Euler", cfg_scale=6.0, seed=7, steps=steps, width=side, height=side)  # fmt: skip

    # The model: cold from disk (the first job), then back from the cache after another model.
    cold = generator.run(replace(base, steps=1)).timings
    disk_load_s = cold["model_load"]
    pipe = generator.current.pipe
    targets = locon_targets(pipe)
    files = write_locons(assets.lora_root / "locon", targets, 6, rank)
    stack_a = tuple(LoraRef(f"locon/{f}", w) for f, w in zip(files[:3], (0.8, 0.6, 0.5), strict=True))
    stack_b = tuple(LoraRef(f"locon/{f}", w) for f, w in zip(files[3:], (0.7, 0.5, 0.4), strict=True))
    budget = generator.models.device_budget
    if generator.models.two_tiers:  # on a GPU: room for one model, so the other one parks in RAM
        generator.models.device_budget = generator.current.size_bytes
    generator.run(replace(base, model=other_model, steps=1, width=64, height=64))
    back = generator.run(replace(base, steps=1)).timings
    generator.models.device_budget = budget
    cache_get_s = back["model_load"]

    # Step times: base, patched stack, unfused stack, alternating.
    with_a = replace(base, loras=stack_a)
    generator.run(replace(with_a, steps=1))  # reads the files and measures the layers
    steps_measured: dict[str, list[float]] = {"base": [], "patched": [], "unfused": []}
    for _ in range(rounds):
        for mode in ("patched", "unfused"):
            generator.lora_mode = mode
            steps_measured["base"].append(_step_seconds(generator, base, sync)[0])
            seconds, timings = _step_seconds(generator, with_a, sync)
            assert timings["lora_path"] == mode, timings
            steps_measured[mode].append(seconds)
    step_s = statistics.median(steps_measured["base"])
    ratio = statistics.median(steps_measured["patched"]) / step_s
    ratio_unfused = statistics.median(steps_measured["unfused"]) / step_s

    # Switching: to B, whose files are cached (B read once, then A applied again).
    generator.lora_mode = "patched"
    generator.run(replace(base, loras=stack_b, steps=1))
    generator.run(replace(with_a, steps=1))
    switch = generator.run(replace(base, loras=stack_b, steps=1)).timings
    switch_cached_ms = 1000 * (switch["lora_read"] + switch["lora_apply"])
    # ... and to B again after its files left the cache and were prefetched during a job.
    generator.run(replace(with_a, steps=1))
    for lora in stack_b:
        sha = generator.inspect(assets.lora_root / lora.file).sha256
        generator.loras.evict(sha)
    loads_before = generator.loras.loads
    prefetch = generator.prefetch(replace(base, loras=stack_b))
    generator.run(replace(with_a, seed=8))  # denoising while the files are read
    prefetch.result()
    prefetched = generator.run(replace(base, loras=stack_b, steps=1)).timings
    assert generator.loras.loads == loads_before + 3, "the prefetch did not read the files"
    switch_prefetched_ms = 1000 * (prefetched["lora_read"] + prefetched["lora_apply"])

    # The policy: each job starts with the other stack applied, so the switch is paid.
    policy: dict[str, Any] = {}
    for label, count in (("short", short_steps), ("long", long_steps)):
        job = replace(base, loras=stack_b, steps=count, seed=11)
        measured: dict[str, Any] = {}
        for mode in ("patched", "unfused", "auto"):
            generator.lora_mode = "patched"
            generator.run(replace(with_a, steps=1))
            generator.lora_mode = mode
            seconds, timings = _job_seconds(generator, job, sync)
            measured[mode] = {"s": round(seconds, 3), "path": timings["lora_path"],
                              "reason": timings["lora_path_reason"]}  # fmt: skip
        chosen = measured["auto"]["path"]
        best = min(measured["patched"]["s"], measured["unfused"]["s"])
        policy[label] = {
            "steps": count,
            "measured": measured,
            "chosen": chosen,
            "regret": round(measured[chosen]["s"] / best, 4),
            "regret_auto_job": round(measured["auto"]["s"] / best, 4),
        }
    generator.lora_mode = "auto"

    # Batching: four one-image jobs against one four-image job.
    batch_recipe = replace(base, steps=short_steps)
    generator.run(replace(batch_recipe, count=4))  # warm the allocator for the larger batch
    singles = sum(_job_seconds(generator, replace(batch_recipe, seed=s), sync)[0] for s in range(4))
    batched, batch_timings = _job_seconds(generator, replace(batch_recipe, count=4), sync)

    step_ms = 1000 * step_s
    speedup = disk_load_s / max(cache_get_s, 1e-6)
    return {
        "size": f"{side}x{side}",
        "sampler": base.sampler,
        "loras": {"files": 6, "rank": rank, "format": "kohya LoCon fp16", "layers_per_file": len(targets)},
        "step_ms": round(step_ms, 1),
        "lora_step_ratio": round(ratio, 4),
        "lora_step_ratio_unfused": round(ratio_unfused, 4),
        "switch_ms_cached": round(switch_cached_ms, 1),
        "switch_ms_prefetched": round(switch_prefetched_ms, 1),
        "policy_regret_short": policy["short"]["regret"],
        "policy_regret_long": policy["long"]["regret"],
        "model_switch_speedup": round(speedup, 1),
        "batch_speedup": round(singles / batched, 3),
        "targets": TARGETS,
        "meets_targets": {
            "lora_step_ratio": ratio <= 1.02,
            "switch_ms_cached": switch_cached_ms < step_ms,
            "switch_ms_prefetched": switch_prefetched_ms < step_ms,
            "policy_regret_short": policy["short"]["regret"] <= 1.05,
            "policy_regret_long": policy["long"]["regret"] <= 1.05,
            "model_switch_speedup": speedup >= 5,
        },
        "details": {
            "step_s_all": {k: [round(v, 4) for v in vs] for k, vs in steps_measured.items()},
            "switch_cached": {k: switch[k] for k in ("lora_read", "lora_apply", "lora_path")},
            "switch_prefetched": {k: prefetched[k] for k in ("lora_read", "lora_apply", "lora_path")},
            "policy": policy,
            "model_disk_load_s": round(disk_load_s, 3),
            "model_cache_get_s": round(cache_get_s, 6),
            "model_cache_source": back["model_source"],
            "batch_four_singles_s": round(singles, 3),
            "batch_one_four_image_job_s": round(batched, 3),
            "batch_timings": {k: batch_timings[k] for k in ("batch_images", "denoise")},
            "clean_copy_gib": round(generator.current.patcher.clean_bytes / 2**30, 3),
            "cost_model": generator.costs.snapshot(),
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    results = run_benchmark(argv)
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
