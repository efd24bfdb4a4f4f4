"""Speed-profile benchmark: ``python -m tests.bench.speed`` prints one JSON object.

Measured in one run on this machine's CPU with the **full-size SD 1.5 architecture** (random
weights from the demo builder, nothing downloaded; ``--size tiny`` for a smoke test) at 256x256:

- ``fast_profile_ratio``: one image with a speed LoRA's profile (LCM-LoRA SD 1.5: LCM, 4 steps,
  CFG 1; a rank-64 UNet LoRA saved as ``lcm-lora-sdv1-5.safetensors``, so its profile is
  detected from the file name the authors publish) over one image with the model's 30-step
  default (DPM++ 2M Karras, CFG 7), **both in steady state**, as a member sees them in a session
  of such images: the default images run one after another with no LoRA, then the fast images
  one after another with the LoRA applied. Warm-up is excluded from both (a short run of the
  default recipe; the first fast image, which also switches the LoRA in). Both recipes are the
  bot's own, made by ``validate`` from a member's request. Medians over ``--rounds``. Target <= 0.2.
- ``lora_switch``: what changing stacks costs, its own figures (not in the ratio): the first
  fast image after default images (``in``: reading the file, the engine's patch or unfused
  switch) and the first default image after fast ones (``out``: restoring the weights), with
  ``fast_profile_ratio_after_switch`` = (fast image + switch in) / default image.
- ``split``: where each image's time goes, measured by timing the pipeline's own modules
  (UNet calls, text encoder, VAE decode) around the engine's LoRA apply; ``other`` is the rest
  (scheduler, latents, PNG).
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
    parser.add_argument("--rounds", type=int, default=2, help="timed images of each kind, in steady state")
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
    from dataclasses import replace
    lora_file = speed_lora(assets, generator.current.pipe, args.rank)
    catalog = catalog_for(generator, assets, model_file, lora_file, args.side, args.default_steps)
    outcomes = {"default": validate(request(False), catalog), "profile": validate(request(True), catalog)}
    recipes = {}
    for label, outcome in outcomes.items():
        if not isinstance(outcome, Validated):
            raise SystemExit(f"the {label} request was refused: {outcome.as_text()}")
        recipes[label] = outcome.recipe

    split = Split(generator.current.pipe)  # type: ignore[union-attr]
    seconds: dict[str, list[float]] = {"default": [], "profile": []}
    splits: dict[str, dict[str, Any]] = {}
    timings: dict[str, dict[str, Any]] = {}

    def image(recipe: Any) -> tuple[float, dict[str, Any], dict[str, Any]]:
        split.reset()
        begun = time.perf_counter()
        engine_timings = generator.run(recipe).timings
        wall = time.perf_counter() - begun
        return wall, engine_timings, split.report(wall, engine_timings)

    # Warm-up of the default path (its scheduler, CFG's two rows), not timed.
    image(replace(recipes["default"], steps=2))
    for _ in range(args.rounds):
        wall, timings["default"], splits["default"] = image(recipes["default"])
        seconds["default"].append(wall)
    # The first fast image after default ones: the LoRA is read and switched in (its warm-up too).
    switch_in_s, switch_in, switch_in_split = image(recipes["profile"])
    for _ in range(args.rounds):
        wall, timings["profile"], splits["profile"] = image(recipes["profile"])
        seconds["profile"].append(wall)
    # Back to default: one step of it is enough to see the weights restored.
    _, switch_out, _ = image(replace(recipes["default"], steps=1))
    default_s, profile_s = statistics.median(seconds["default"]), statistics.median(seconds["profile"])
    switch_in_cost = float(switch_in.get("lora_read", 0.0)) + float(switch_in.get("lora_apply", 0.0))

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

    def engine_split(t: dict[str, Any]) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in t.items()
                if isinstance(v, (int, float, str))}  # fmt: skip

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
            "default_image_s": [round(x, 3) for x in seconds["default"]],
            "profile_image_s": [round(x, 3) for x in seconds["profile"]],
            "lora_switch": {
                "in_s": round(switch_in_cost, 3),
                "in_read_s": round(float(switch_in.get("lora_read", 0.0)), 3),
                "in_apply_s": round(float(switch_in.get("lora_apply", 0.0)), 3),
                "in_path": switch_in.get("lora_path"),
                "out_apply_s": round(float(switch_out.get("lora_apply", 0.0)), 3),
                "first_fast_image_s": round(switch_in_s, 3),
                "first_fast_image_split": switch_in_split,
                "fast_profile_ratio_after_switch": round((profile_s + switch_in_cost) / default_s, 4),
            },
            # Where the time of the last steady-state image of each kind went.
            "split": splits,
            # The engine's own split of the same images (LoRA path and its reason, denoise, ...).
            "timings": {label: engine_split(t) for label, t in timings.items()},
            "merge_ms": round(merge_ms, 4),
            "validate_without_profile_ms": round(plain_ms, 4),
            "validate_calls": args.calls,
        },
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "seconds": round(time.perf_counter() - started, 1),
    }


class Split:
    """Seconds spent in the pipeline's UNet, text encoder(s) and VAE decode, by wrapping their
    own ``forward``/``decode`` on the instances (the bench's view; the engine is unchanged)."""

    PARTS = {"unet": ("unet", "forward"), "text_encoder": ("text_encoder", "forward"),
             "text_encoder_2": ("text_encoder_2", "forward"), "vae_decode": ("vae", "decode")}  # fmt: skip

    def __init__(self, pipe: Any) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        for part, (attribute, method) in self.PARTS.items():
            module = getattr(pipe, attribute, None)
            if module is not None:
                setattr(module, method, self._timed(part, getattr(module, method)))

    def _timed(self, part: str, original: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            begun = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - begun
                self.calls[part] = self.calls.get(part, 0) + 1

        return timed

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def report(self, wall: float, engine_timings: dict[str, Any]) -> dict[str, Any]:
        lora = float(engine_timings.get("lora_read", 0.0)) + float(engine_timings.get("lora_apply", 0.0))
        out: dict[str, Any] = {part: round(s, 3) for part, s in self.seconds.items()}
        out["lora_read_apply"] = round(lora, 3)
        out["other"] = round(wall - sum(self.seconds.values()) - lora, 3)
        out["unet_calls"] = self.calls.get("unet", 0)
        if out["unet_calls"]:
            out["unet_per_call"] = round(self.seconds["unet"] / out["unet_calls"], 3)
        return out


def main(argv: Sequence[str] | None = None) -> int:
    report = run_benchmark(argv)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
