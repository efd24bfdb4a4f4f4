"""GPU benchmark: the engine against raw diffusers on patched weights, and the runtime figures.

Run on a machine with a CUDA GPU (the full-size models are built there, from random weights
with the real SD 1.5 / SDXL architectures; nothing is downloaded)::

    python -m tests.bench.gpu --device cuda --dtype float16 --size full \
        --arch sd15 --arch sdxl --steps 30 --images 8 --out demo-out/gpu-bench

It prints ONE JSON object. For each architecture, four modes generate ``--images`` images
(one image per pipeline call, seeds ``seed + i``, same prompt, sampler, steps and CFG), each
after one untimed warm-up image, with CUDA synchronised around every timing:

- ``raw``: the diffusers pipeline (loaded by ``engine.pipelines.load_pipeline``) called
  directly, plus a plain PNG encode of each image (the engine's product is a PNG too);
- ``engine``: ``engine.generate.Generator.run`` (validation, hashing memoised, scheduler
  swap, per-image seeded latents, PNG with A1111 + recipe metadata), no LoRA;
- ``raw_lora``: the raw pipeline with the three demo LoRAs (watercolor, pixel-art,
  captain-nova; ``-xl`` for SDXL) loaded by ``load_lora_weights``, weighted by
  ``set_adapters``, then ``fuse_lora`` + ``unload_lora_weights``: raw diffusers on *patched*
  weights, the fastest plain diffusers can run a stack (loading is reported apart, not timed);
- ``engine_lora``: ``Generator.run`` with the same stack, already in its LoRA cache (the
  warm-up job loaded it), as a user repeating a recipe would see it.

``ratio_engine_over_raw`` is engine images/s over raw images/s (1.0 = no overhead; below 1
means the engine is slower). ``runtime`` holds, per architecture, the figures of
``tests.bench.runtime`` at this size and dtype (step time, LoRA step ratios on both paths,
stack switches cached and prefetched, the path policy's regret, model-cache and batch
speedups), measured with rank-32 kohya LoCon files on every LoCon layer; ``--no-runtime``
skips them. ``peak_gpu_memory_gib`` is ``torch.cuda.max_memory_allocated``
over each half (the raw pipeline is freed before the engine loads its own). ``build_s`` is
the demo build (near zero when ``--out`` already holds it: each architecture is built in
``OUT/<arch>-<size>`` and reused; ``demo-out/`` is git-ignored). Under a 10-minute limit per
command, run one ``--arch`` per command with the same ``--out``. ``--size tiny`` runs anywhere in seconds (the smoke test).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ARCHITECTURES = ("sd15", "sdxl", "flux")
#: What runs without ``--arch`` (FLUX.1 dev's full build is 34 GB on disk: asked for by name).
DEFAULT_ARCHITECTURES = ("sd15", "sdxl")
#: Native resolutions at full size; tiny models only exist to exercise the code, so small.
RESOLUTION = {"full": {"sd15": 512, "sdxl": 1024, "flux": 1024}, "tiny": {"sd15": 256, "sdxl": 256, "flux": 256}}
#: FLUX.1 dev as people run it: 28 steps, distilled guidance 3.5, flow-matching Euler.
FLUX_STEPS = 28
FLUX_GUIDANCE = 3.5
FLUX_STACK = (0.8, 0.6)
FLUX_PROMPT = ("a lighthouse on a cliff above a stormy sea at dusk, a red-scarfed captain at its door, "
               "warm light in the windows, painted in loose watercolour")  # fmt: skip
LORA_STACK = (("watercolor", 0.8), ("pixel-art", 0.6), ("captain-nova", 0.5))
PROMPT = "watercolor, pixel art, captain nova on a lighthouse cliff at dusk, red scarf"
NEGATIVE = "blurry, low quality"
CFG_SCALE = 7.0
SEED = 1234
#: Generator.run refuses more images than this per job, so longer runs are split into jobs.
MAX_COUNT = 8
MODES = ("raw", "engine", "raw_lora", "engine_lora")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    parser.add_argument("--size", default="full", choices=("full", "tiny"))
    parser.add_argument("--arch", action="append", choices=ARCHITECTURES,
                        help="repeatable (default: sd15 and sdxl; flux builds FLUX.1 dev, 34 GB on disk at full size)")
    parser.add_argument("--flux-steps", type=int, default=FLUX_STEPS, help="steps of the FLUX.1 dev images")
    parser.add_argument("--flux-rank", type=int, default=16, help="rank of the FLUX LoRAs (PEFT layout, every linear)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--images", type=int, default=8, help="timed images per mode")
    parser.add_argument("--sampler", default="DPM++ 2M Karras", help="an A1111 sampler name")
    parser.add_argument("--out", type=Path, help="where to build (and reuse) the models; default: a temp dir")
    parser.add_argument("--no-runtime", action="store_true", help="skip the runtime figures")
    parser.add_argument("--runtime-steps", type=int, default=10, help="steps of the step-time jobs")
    parser.add_argument("--runtime-side", type=int, help="image side of the runtime figures (default: the native size)")
    parser.add_argument("--short-steps", type=int, default=4)
    parser.add_argument("--long-steps", type=int, default=30)
    parser.add_argument("--rank", type=int, default=32, help="rank of the runtime figures' LoCon files")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.images < 1:
        parser.error("--steps and --images must be at least 1")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda but torch sees no CUDA GPU; run on a GPU machine or pass --device cpu")
    return args


def _quiet() -> None:
    import logging

    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
    logging.getLogger("peft").setLevel(logging.ERROR)


def _on_cuda(device: str) -> bool:
    return device.startswith("cuda")


def _sync(device: str) -> None:
    if _on_cuda(device):
        import torch

        torch.cuda.synchronize()


def _free(device: str) -> None:
    gc.collect()
    if _on_cuda(device):
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    if not _on_cuda(device):
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3)


def _timed(device: str, work: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds of ``work`` with the GPU drained before and after (its queue is asynchronous)."""
    _sync(device)
    started = time.perf_counter()
    result = work()
    _sync(device)
    return time.perf_counter() - started, result


class RawPipeline:
    """The baseline: the diffusers pipeline driven the way its documentation shows."""

    def __init__(self, model_path: Path, *, device: str, dtype: str, sampler: str) -> None:
        from engine.pipelines import load_pipeline
        from engine.samplers import make_scheduler

        self.pipe, _ = load_pipeline(model_path, device=device, dtype=dtype)
        self.pipe.scheduler = make_scheduler(sampler, self.pipe.scheduler.config)

    def load_loras(self, files: Sequence[Path], weights: Sequence[float]) -> None:
        """The stack fused into the weights and the adapter layers removed: patched weights."""
        names = [f"bench_{index}" for index in range(len(files))]
        for name, file in zip(names, files, strict=True):
            self.pipe.load_lora_weights(str(file), adapter_name=name)
        self.pipe.set_adapters(names, adapter_weights=list(weights))
        self.pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
        self.pipe.unload_lora_weights()

    def images(self, recipe: Any, count: int) -> list[bytes]:
        import torch

        pngs = []
        with torch.inference_mode():
            for index in range(count):
                image = self.pipe(
                    prompt=recipe.prompt,
                    negative_prompt=recipe.negative_prompt,
                    num_inference_steps=recipe.steps,
                    guidance_scale=recipe.cfg_scale,
                    width=recipe.width,
                    height=recipe.height,
                    generator=torch.Generator(device="cpu").manual_seed(recipe.seed + index),
                ).images[0]
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                pngs.append(buffer.getvalue())
        return pngs


def _engine_images(generator: Any, recipe: Any, count: int) -> tuple[list[bytes], dict[str, float]]:
    from dataclasses import replace

    pngs: list[bytes] = []
    timings: dict[str, float] = {}
    for start in range(0, count, MAX_COUNT):
        job = replace(recipe, seed=recipe.seed + start, count=min(MAX_COUNT, count - start))
        result = generator.run(job)
        pngs += result.images
        for key, value in result.timings.items():
            if isinstance(value, int | float):
                timings[key] = timings.get(key, 0.0) + value
    return pngs, timings


def _bench_raw(
    model_path: Path,
    recipe: Any,
    lora_recipe: Any,
    files: Sequence[Path],
    weights: Sequence[float],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The raw modes; the pipeline is freed on return, before the engine loads its own."""
    device, count = args.device, args.images
    _free(device)
    load_s, raw = _timed(
        device, lambda: RawPipeline(model_path, device=device, dtype=args.dtype, sampler=args.sampler)
    )
    raw.images(recipe, 1)
    plain_s, pngs = _timed(device, lambda: raw.images(recipe, count))
    assert len(pngs) == count
    lora_load_s, _ = _timed(device, lambda: raw.load_loras(files, weights))
    raw.images(lora_recipe, 1)
    lora_s, pngs = _timed(device, lambda: raw.images(lora_recipe, count))
    assert len(pngs) == count
    return {
        "seconds": {"raw": plain_s, "raw_lora": lora_s},
        "peak": _peak_gib(device),
        "raw_load_s": load_s,
        "raw_lora_load_s": lora_load_s,
    }


def _bench_engine(assets: Any, recipe: Any, lora_recipe: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The engine modes, each after a first job that pays the one-off costs."""
    from engine.generate import Generator

    device, count = args.device, args.images
    _free(device)
    generator = Generator(assets.model_root, assets.lora_root, device=device, dtype=args.dtype)
    # The first job loads the model and hashes its files (memoised for later jobs).
    first_s, _ = _timed(device, lambda: _engine_images(generator, recipe, 1))
    plain_s, (pngs, plain_timings) = _timed(device, lambda: _engine_images(generator, recipe, count))
    assert len(pngs) == count
    # The first job with the stack reads and injects the three files into the LoRA cache.
    first_lora_s, _ = _timed(device, lambda: _engine_images(generator, lora_recipe, 1))
    lora_s, (pngs, lora_timings) = _timed(device, lambda: _engine_images(generator, lora_recipe, count))
    assert len(pngs) == count
    assert generator.loras.loads == len(lora_recipe.loras), "the timed LoRA jobs reloaded files"
    peak = _peak_gib(device)
    return {
        "seconds": {"engine": plain_s, "engine_lora": lora_s},
        "peak": peak,
        "timings": {
            "engine": {k: round(v, 4) for k, v in plain_timings.items()},
            "engine_lora": {k: round(v, 4) for k, v in lora_timings.items()},
        },
        "engine_first_job_s": first_s,
        "engine_first_lora_job_s": first_lora_s,
    }


def bench_architecture(arch: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from dataclasses import replace

    from engine.protocol import LoraRef, Recipe
    from sandbox.model_builder import STAMP_FILE, build_demo_assets

    count = args.images
    build_dir = out / f"{arch}-{args.size}"
    reused = (build_dir / STAMP_FILE).is_file()
    build_s, assets = _timed("cpu", lambda: build_demo_assets(build_dir, size=args.size, architectures=(arch,)))
    suffix = "-xl" if arch == "sdxl" else ""
    loras = [(assets.lora(name + suffix), weight) for name, weight in LORA_STACK]
    side = RESOLUTION[args.size][arch]
    recipe = Recipe(
        model=assets.models[arch], prompt=PROMPT, negative_prompt=NEGATIVE, sampler=args.sampler,
        steps=args.steps, cfg_scale=CFG_SCALE, seed=SEED, width=side, height=side,
    )  # fmt: skip
    stack = tuple(LoraRef(lora.file, weight, name=lora.name) for lora, weight in loras)
    lora_recipe = replace(recipe, loras=stack)
    files = [assets.lora_root / lora.file for lora, _ in loras]
    model_path = assets.model_root / assets.models[arch]
    raw = _bench_raw(model_path, recipe, lora_recipe, files, [w for _, w in loras], args)
    engine = _bench_engine(assets, recipe, lora_recipe, args)
    runtime_figures = None
    if not args.no_runtime:
        from tests.bench import runtime

        _free(args.device)
        other = runtime.second_model(assets, out / "second-model")
        runtime_figures = runtime.measure(
            assets, model=assets.models[arch], other_model=other, side=args.runtime_side or side, steps=args.runtime_steps,
            short_steps=args.short_steps, long_steps=args.long_steps, rank=args.rank, rounds=args.rounds,
            device=args.device, dtype=args.dtype, sync=lambda: _sync(args.device),
        )  # fmt: skip
        runtime_figures["peak_gpu_memory_gib"] = _peak_gib(args.device)
    seconds = {**raw.pop("seconds"), **engine.pop("seconds")}
    per_second = {mode: round(count / seconds[mode], 4) for mode in MODES}
    return {
        "model": assets.models[arch],
        "resolution": f"{side}x{side}",
        "loras": [{"file": lora.file, "weight": weight} for lora, weight in loras],
        "images_per_s": per_second,
        "ratio_engine_over_raw": {
            "no_lora": round(seconds["raw"] / seconds["engine"], 4),
            "lora_stack": round(seconds["raw_lora"] / seconds["engine_lora"], 4),
        },
        "seconds": {mode: round(seconds[mode], 4) for mode in MODES},
        "engine_timings_s": engine.pop("timings"),
        "peak_gpu_memory_gib": {"raw": raw.pop("peak"), "engine": engine.pop("peak")},
        "build_s": round(build_s, 2),
        "build_reused": reused,
        "runtime": runtime_figures,
        **{name: round(value, 3) for name, value in {**raw, **engine}.items()},
    }


# --- FLUX.1 dev ----------------------------------------------------------------------------


def build_flux_folder(folder: Path, *, size: str, dtype: str, device: str) -> Path:
    """FLUX.1 dev as a diffusers folder with random weights: the shipped real configs at
    ``full`` (built on ``device`` in ``dtype``, saved once and reused), the tiny build else."""
    import shutil

    import torch

    from engine.arch.flux.t5_tokenizer import write_t5_tokenizer
    from engine.component_configs import CONFIG_ROOT
    from engine.pipelines import torch_dtype
    from engine.tokenizer import write_tokenizer

    stamp = folder / ".built"
    if stamp.is_file():
        return folder
    if size == "tiny":
        from sandbox.flux_builder import build_components, save_diffusers_folder

        save_diffusers_folder(build_components("dev", seed=3), folder, "dev")
    else:
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

        root = CONFIG_ROOT / "flux1"
        config = {name: json.loads((root / name / "config.json").read_text()) for name in
                  ("transformer", "vae", "text_encoder", "text_encoder_2")}  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "model_index.json", folder / "model_index.json")
        builders = {
            "transformer": lambda: FluxTransformer2DModel.from_config(config["transformer"]),
            "vae": lambda: AutoencoderKL.from_config(config["vae"]),
            "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**config["text_encoder"])),
            "text_encoder_2": lambda: T5EncoderModel(T5Config(**config["text_encoder_2"])),
        }
        torch.manual_seed(0)
        for name, build in builders.items():  # one at a time: T5-XXL and the transformer are large
            previous = torch.get_default_dtype()
            torch.set_default_dtype(torch_dtype(dtype))
            try:
                with torch.device(device):
                    module = build()
            finally:
                torch.set_default_dtype(previous)
            module.save_pretrained(str(folder / name), safe_serialization=True, max_shard_size="10GB")
            del module
            _free(device)
        FlowMatchEulerDiscreteScheduler.from_config(
            json.loads((root / "scheduler" / "scheduler_config.json").read_text())
        ).save_pretrained(str(folder / "scheduler"))
        write_tokenizer(folder / "tokenizer")
        write_t5_tokenizer(folder / "tokenizer_2", max_length=512)
    stamp.write_text("ok")
    return folder


def write_flux_loras(folder: Path, lora_root: Path, rank: int) -> list[Path]:
    """Two PEFT-layout LoRAs (``transformer.<module>.lora_A/B``) on every linear layer of the
    transformer: a layout both diffusers' ``load_lora_weights`` and the engine read at any width
    (diffusers' kohya converter assumes width 3072)."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    config = json.loads((folder / "transformer" / "config.json").read_text())
    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(config)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    lora_root.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(len(FLUX_STACK)):
        path = lora_root / f"flux-peft-{index}.safetensors"
        if not path.is_file():
            generator = torch.Generator().manual_seed(index)
            state = {}
            for name, module in linears.items():
                state[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.01
                state[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.01
            save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, str(path))
        paths.append(path)
    return paths


class RawFlux:
    """The baseline: diffusers' FluxPipeline as its documentation drives it."""

    def __init__(self, folder: Path, *, device: str, dtype: str) -> None:
        from diffusers import FluxPipeline

        from engine.pipelines import torch_dtype

        self.pipe = FluxPipeline.from_pretrained(str(folder), torch_dtype=torch_dtype(dtype), local_files_only=True)
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.to(device)

    #: The stack fused into the weights, adapters removed, as for the SD baseline.
    load_loras = RawPipeline.load_loras

    def images(self, recipe: Any, count: int) -> list[bytes]:
        import torch

        pngs = []
        with torch.inference_mode():
            for index in range(count):
                image = self.pipe(
                    prompt=recipe.prompt, num_inference_steps=recipe.steps, guidance_scale=recipe.cfg_scale,
                    width=recipe.width, height=recipe.height, max_sequence_length=512,
                    generator=torch.Generator(device="cpu").manual_seed(recipe.seed + index),
                ).images[0]  # fmt: skip
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                pngs.append(buffer.getvalue())
        return pngs


def _bench_raw_flux(folder: Path, recipe: Any, lora_recipe: Any, files: Sequence[Path],
                    args: argparse.Namespace) -> tuple[float, float, float, float, float | None]:  # fmt: skip
    """(plain s, LoRA s, load s, LoRA load s, peak GiB); the pipeline is freed on return."""
    device, count = args.device, args.images
    _free(device)
    load_s, raw = _timed(device, lambda: RawFlux(folder, device=device, dtype=args.dtype))
    raw.images(recipe, 1)
    plain_s, _ = _timed(device, lambda: raw.images(recipe, count))
    lora_load_s, _ = _timed(device, lambda: raw.load_loras(files, FLUX_STACK))
    raw.images(lora_recipe, 1)
    lora_s, _ = _timed(device, lambda: raw.images(lora_recipe, count))
    return plain_s, lora_s, load_s, lora_load_s, _peak_gib(device)


def bench_flux(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """FLUX.1 dev at its native size and 28 steps: raw FluxPipeline against the engine, with
    and without a 2-LoRA stack (raw: fused). Same shape of report as the SD architectures;
    the LoRA step figures on the CPU are ``tests.bench.flux``'s."""
    from dataclasses import replace
    from types import SimpleNamespace

    from engine.protocol import LoraRef, Recipe

    base = out / f"flux-{args.size}"
    models, loras = base / "models", base / "loras"
    build_s, folder = _timed("cpu", lambda: build_flux_folder(models / "flux1-dev", size=args.size,
                                                              dtype=args.dtype, device=args.device))  # fmt: skip
    files = write_flux_loras(folder, loras, args.flux_rank)
    side = RESOLUTION[args.size]["flux"]
    recipe = Recipe(model=folder.name, prompt=FLUX_PROMPT, sampler="Euler", steps=args.flux_steps,
                    cfg_scale=FLUX_GUIDANCE, seed=SEED, width=side, height=side)  # fmt: skip
    lora_recipe = replace(recipe, loras=tuple(LoraRef(f.name, w) for f, w in zip(files, FLUX_STACK, strict=True)))
    count = args.images
    raw_s, raw_lora_s, load_s, lora_load_s, raw_peak = _bench_raw_flux(folder, recipe, lora_recipe, files, args)
    engine = _bench_engine(SimpleNamespace(model_root=models, lora_root=loras), recipe, lora_recipe, args)
    seconds = {"raw": raw_s, "raw_lora": raw_lora_s, **engine.pop("seconds")}
    return {
        "model": folder.name,
        "resolution": f"{side}x{side}",
        "steps": args.flux_steps,
        "guidance": FLUX_GUIDANCE,
        "loras": [{"file": f.name, "weight": w, "rank": args.flux_rank} for f, w in zip(files, FLUX_STACK, strict=True)],
        "images_per_s": {mode: round(count / seconds[mode], 4) for mode in MODES},
        "ratio_engine_over_raw": {
            "no_lora": round(seconds["raw"] / seconds["engine"], 4),
            "lora_stack": round(seconds["raw_lora"] / seconds["engine_lora"], 4),
        },
        "target": "ratio_engine_over_raw >= 1 / 1.02 on a GPU",
        "seconds": {mode: round(seconds[mode], 4) for mode in MODES},
        "engine_timings_s": engine.pop("timings"),
        "peak_gpu_memory_gib": {"raw": raw_peak, "engine": engine.pop("peak")},
        "build_s": round(build_s, 2),
        "raw_load_s": round(load_s, 3),
        "raw_lora_load_s": round(lora_load_s, 3),
        "runtime": None,  # the FLUX step/switch figures: python -m tests.bench.flux
        **{name: round(value, 3) for name, value in engine.items()},
    }


def run_benchmark(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Everything ``main`` prints, as a dict."""
    import diffusers
    import torch

    args = parse_args(argv)
    _quiet()
    started = time.perf_counter()
    architectures = list(dict.fromkeys(args.arch or DEFAULT_ARCHITECTURES))
    with tempfile.TemporaryDirectory(prefix="atelier-gpu-bench-") as tmp:
        out = args.out or Path(tmp)
        results = {arch: bench_flux(args, out) if arch == "flux" else bench_architecture(arch, args, out)
                   for arch in architectures}  # fmt: skip
    on_cuda = _on_cuda(args.device)
    return {
        "benchmark": "gpu",
        "device": args.device,
        "device_name": torch.cuda.get_device_name(args.device) if on_cuda else platform.processor() or "cpu",
        "dtype": args.dtype,
        "size": args.size,
        "steps": args.steps,
        "images": args.images,
        "sampler": args.sampler,
        "cfg_scale": CFG_SCALE,
        "statistic": "images / seconds for --images images, one per pipeline call, after one "
        "warm-up image; raw includes a plain PNG encode, engine its PNG with metadata",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "torch_threads": torch.get_num_threads(),
        "architectures": results,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    results = run_benchmark(argv)
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
