"""Speed-profile benchmark: ``python -m tests.bench.speed`` prints one JSON object.

Measured in one run on this machine's CPU with the **full-size SD 1.5 architecture** (random
weights from the demo builder, nothing downloaded; ``--size tiny`` for a smoke test) at 256x256:

- ``fast_profile_ratio``: the time of one image with a speed LoRA's profile (LCM-LoRA SD 1.5:
  LCM, 4 steps, CFG 1; a rank-64 UNet LoRA saved as ``lcm-lora-sdv1-5.safetensors``, so its
  profile is detected from the file name the authors publish) over one image with the model's
  30-step default (DPM++ 2M Karras, CFG 7). Both recipes are the bot's own, made by
  ``validate`` from a member's request; each job starts with the other job's stack applied,
  so the LoRA switch is paid. Medians of alternating runs. Target <= 0.2.
- ``profile_overhead_ms``: ``validate`` (which merges the profile: model defaults, the
  stack's profile, the member's options) on that request, median of many calls. Target < 1.
  ``merge_ms`` is the merge alone, ``validate_without_profile_ms`` the same request without
  the speed LoRA, for scale.

The full build peaks near 9 GB of RAM and is done in a child process first (reused from
``--out`` when present). Run it alone, ``nice -n 10``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TARGETS = {"fast_profile_ratio": "<= 0.2", "profile_overhead_ms": "< 1"}
SPEED_LORA = "lcm-lora-sdv1-5.safetensors"
GUILD = 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--side", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--default-steps", type=int, default=30, help="the model's default steps (default 30)")
    parser.add_argument("--rank", type=int, default=64, help="rank of the speed LoRA (LCM-LoRA's is 64)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the two images")
    parser.add_argument("--calls", type=int, default=500, help="validate calls timed for the overhead")
    parser.add_argument("--out", type=Path, default=Path("demo-out/bench-speed"),
                        help="where the model and LoRA are built (reused when present)")  # fmt: skip
    return parser.parse_args(argv)


def speed_lora(assets: Any, pipe: Any, rank: int) -> str:
    """A UNet-only kohya LoRA (LCM-LoRA adapts the UNet only) under LCM-LoRA's file name."""
    from tests.bench.runtime import locon_targets, write_locons

    folder = assets.lora_root / "speed"
    target = folder / SPEED_LORA
    if not target.is_file():
        unet = [t for t in locon_targets(pipe) if t[1] == "unet"]
        (name,) = write_locons(folder, unet, 1, rank)
        (folder / name).rename(target)
    return f"speed/{SPEED_LORA}"


def catalog_for(generator: Any, assets: Any, model_file: str, lora_file: str, side: int, default_steps: int) -> Any:
    """The bot's catalog of a server that registered the model and the LoRA from the engine's
    inspection of the files (the LoRA's profile proposed from its file name, as /lora add does)."""
    from bot.registry import Catalog, LoraEntry, ModelEntry, ServerSettings

    model_info = generator.inspect(assets.model_root / model_file)
    model_info = type(model_info)(**{**model_info.__dict__, "path": model_file})
    lora_info = generator.inspect(assets.lora_root / lora_file)
    lora_info = type(lora_info)(**{**lora_info.__dict__, "path": lora_file})
    model = ModelEntry.from_file_info(model_info, name="sd15", default_steps=default_steps, default_cfg=7.0,
                                      default_width=side, default_height=side)  # fmt: skip
    lora = LoraEntry.from_file_info(lora_info, name="lcm")
    if lora.speed_profile != "lcm-sd15":
        raise SystemExit(f"the speed LoRA was proposed {lora.speed_profile!r}, not lcm-sd15")
    return Catalog(GUILD, ServerSettings(default_model="sd15"), [model], [lora])


def _median_ms(call: Any, calls: int) -> float:
    call()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def run_benchmark(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch

    from bot.request.outcome import Check
    from bot.request.parse import build_request
    from bot.request.profiles import merge_profile
    from bot.request.validation import Validated, validate
    from engine.generate import Generator
    from tests.bench.runtime import _quiet, build

    args = parse_args(argv)
    _quiet()
    started = time.perf_counter()
    load_before = os.getloadavg()
    assets = build(args.out.resolve(), args.size)
    model_file = assets.models["sd15"]
    generator = Generator(assets.model_root, assets.lora_root, cache_max_loras=4)

    def request(with_lora: bool) -> Any:
        return build_request(guild_id=GUILD, channel_id=1, user_id=2, channel_is_nsfw=False, seed=7,
                             prompt="a lighthouse on a cliff at dusk, oil painting", negative_prompt="blurry",
                             slots=[("lcm", None)] if with_lora else [])  # fmt: skip

    from engine.protocol import Recipe

    generator.run(Recipe(model=model_file, prompt="warm up", steps=1, width=args.side, height=args.side))
    lora_file = speed_lora(assets, generator.current.pipe, args.rank)
    catalog = catalog_for(generator, assets, model_file, lora_file, args.side, args.default_steps)
    outcomes = {"default": validate(request(False), catalog), "profile": validate(request(True), catalog)}
    recipes = {}
    for label, outcome in outcomes.items():
        if not isinstance(outcome, Validated):
            raise SystemExit(f"the {label} request was refused: {outcome.as_text()}")
        recipes[label] = outcome.recipe

    seconds: dict[str, list[float]] = {"default": [], "profile": []}
    generator.run(recipes["profile"])  # reads the LoRA file once, as a server that used it before has
    for _ in range(args.rounds):
        for label in ("default", "profile"):
            begun = time.perf_counter()
            generator.run(recipes[label])
            seconds[label].append(time.perf_counter() - begun)
    default_s, profile_s = statistics.median(seconds["default"]), statistics.median(seconds["profile"])

    with_profile = request(True)
    overhead_ms = _median_ms(lambda: validate(with_profile, catalog), args.calls)
    model, lora = catalog.model("sd15"), catalog.lora("lcm")
    merge_ms = _median_ms(lambda: merge_profile(with_profile, model, [(lora, 1.0)], Check()), args.calls)
    without = request(False)
    plain_ms = _median_ms(lambda: validate(without, catalog), args.calls)

    def describe(recipe: Any) -> str:
        return f"{recipe.sampler}, {recipe.steps} steps, CFG {recipe.cfg_scale:g}" + (
            f", {recipe.loras[0].name} x {recipe.loras[0].weight:g}" if recipe.loras else "")  # fmt: skip

    figures = {
        "fast_profile_ratio": round(profile_s / default_s, 4),
        "profile_overhead_ms": round(overhead_ms, 4),
    }
    meets = {
        "fast_profile_ratio": figures["fast_profile_ratio"] <= 0.2,
        "profile_overhead_ms": figures["profile_overhead_ms"] < 1,
    }
    return {
        "benchmark": "speed",
        "device": "cpu",
        "model": f"sd15 {args.size} (demo builder, random weights), {args.side}x{args.side}",
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        **figures,
        "targets": TARGETS,
        "meets_targets": meets,
        "details": {
            "default_recipe": describe(recipes["default"]),
            "profile_recipe": describe(recipes["profile"]),
            "profile": outcomes["profile"].profile,  # type: ignore[union-attr]
            "default_image_s": [round(s, 3) for s in seconds["default"]],
            "profile_image_s": [round(s, 3) for s in seconds["profile"]],
            "merge_ms": round(merge_ms, 4),
            "validate_without_profile_ms": round(plain_ms, 4),
            "validate_calls": args.calls,
        },
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    report = run_benchmark(argv)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
