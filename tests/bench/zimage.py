"""Z-Image LoRA benchmark: ``python -m tests.bench.zimage`` prints one JSON object.

The FLUX benchmark's figures (:mod:`tests.bench.flux`) for Z-Image, measured on this machine's
CPU with a Z-Image transformer cut to ``--layers`` main blocks (and ``--refiners`` noise and
context refiner blocks) at Z-Image's real width (3840, 30 heads of 128; random weights, nothing
downloaded), a tiny Qwen3 and VAE from :mod:`sandbox.zimage_builder`, and real-rank
kohya/musubi LoRAs (rank 16, bf16) on every layer they train in the official layout (the fused
``attention.qkv`` sliced onto diffusers' ``to_q/to_k/to_v``, ``attention.out``, the SwiGLU
feed-forward, the modulations, embedders and last layer). The LoRAs go through the engine's own
path: :func:`engine.arch.zimage.lora_keys.read_zimage_lora` / ``bind_zimage_lora`` and
:class:`engine.patcher.WeightPatcher`.

- ``step_ms``: one transformer call (Turbo runs one row per step) on ``--image-tokens`` patch
  tokens and ``--text-tokens`` Qwen3 tokens, median of ``--samples`` samples interleaved with
  the patched ones (each the fastest of ``--repeat`` calls);
- ``lora_step_ratio``: median step with a 2-LoRA stack patched over the median base step
  (target <= 1.02);
- ``switch_ms``: changing to another 2-LoRA stack (restore and apply), median (target below one
  step);
- ``prompt_encode_ms_cached``: the same prompt encoded again (target below 5 % of a step).

One block at 3840 holds about 0.2 B weights (0.8 GB in fp32, as much again for the patcher's
clean copies): run it alone, ``nice -n 10``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests.bench.flux import TARGETS, _spread


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.zimage", description=__doc__.split("\n")[0])
    parser.add_argument("--heads", type=int, default=30)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--refiners", type=int, default=0)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--samples", type=int, default=7, help="base and LoRA steps each (interleaved)")
    parser.add_argument("--repeat", type=int, default=3, help="calls per sample, the fastest kept")
    parser.add_argument("--switches", type=int, default=4)
    parser.add_argument("--image-tokens", type=int, default=64, help="2x2 latent patches (64: a 128x128 image)")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("/tmp/atelier-bench-zimage"))
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> Any:
    """A ZImagePipeline: the cut transformer at the asked width, tiny Qwen3 and VAE."""
    import torch

    from engine.arch.zimage.loading import pipeline
    from sandbox.zimage_builder import build_components, build_tokenizer

    torch.manual_seed(0)
    parts = build_components(0, head_dim=args.head_dim, heads=args.heads, layers=args.layers, refiners=args.refiners)
    pipe = pipeline(parts["transformer"], parts["vae"], parts["text_encoder"], build_tokenizer())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_loras(pipe: Any, folder: Path, rank: int, count: int) -> list[Path]:
    """``count`` kohya/musubi Z-Image LoRAs on every layer they train, from the official shapes."""
    import torch
    from safetensors.torch import save_file

    from engine.arch.flux.loading import _meta
    from engine.arch.zimage.convert import to_original
    from sandbox.zimage_builder import kohya_lora_state

    shapes = {k: tuple(v.shape) for k, v in pipe.transformer.state_dict().items()}
    original = {k: tuple(v.shape) for k, v in to_original(_meta(shapes)).items()}
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        state = kohya_lora_state(original, rank=rank, alpha=rank / 2, seed=index, scale=0.02)
        path = folder / f"zimage-kohya-{index}.safetensors"
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, str(path))
        paths.append(path)
    return paths


def run_benchmark(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch

    from engine.arch.zimage.lora_keys import bind_zimage_lora, read_zimage_lora
    from engine.arch.zimage.pipeline import RUNTIME, ZImagePromptEncoder
    from engine.patcher import PATCHED, StackEntry, WeightPatcher

    args = parse_args(argv)
    torch.set_grad_enabled(False)
    pipe = build(args)
    transformer = pipe.transformer
    paths = write_loras(pipe, args.out, args.rank, 4)
    read_started = time.perf_counter()
    files = [read_zimage_lora(p, label=p.stem, sha256=f"{i:064x}") for i, p in enumerate(paths)]
    read_s = (time.perf_counter() - read_started) / len(files)
    bound = [bind_zimage_lora(f, pipe, model_name="bench-zimage") for f in files]
    patcher = WeightPatcher(pipe, RUNTIME.lora_components(pipe))
    stack_a = [StackEntry(bound[0], 0.8), StackEntry(bound[1], 0.6)]
    stack_b = [StackEntry(bound[2], 0.7), StackEntry(bound[3], 0.5)]

    config = transformer.config
    g = torch.Generator().manual_seed(1)
    side = max(1, int(round(args.image_tokens**0.5)))
    inputs = {
        "x": [torch.randn(config.in_channels, 1, 2 * side, 2 * side, generator=g)],
        "t": torch.tensor([0.5]),
        "cap_feats": [torch.randn(args.text_tokens, config.cap_feat_dim, generator=g)],
        "return_dict": False,
    }

    def step() -> float:
        best = float("inf")
        for _ in range(max(1, args.repeat)):
            started = time.perf_counter()
            with torch.inference_mode():
                transformer(**inputs)
            best = min(best, time.perf_counter() - started)
        return best

    step()  # warm-up
    patcher.apply(stack_a, PATCHED)
    step()
    base: list[float] = []
    patched: list[float] = []
    for _ in range(args.samples):  # interleaved, so drift in the machine's load hits both alike
        patcher.apply([], PATCHED)
        base.append(step())
        patcher.apply(stack_a, PATCHED)
        patched.append(step())
    ratios = [p / b for b, p in zip(base, patched, strict=True)]
    step_s = statistics.median(base)

    switches: list[float] = []
    for index in range(args.switches):
        report = patcher.apply(stack_b if index % 2 == 0 else stack_a, PATCHED)
        switches.append(report["seconds"])
    switch_s = statistics.median(switches)

    encoder = ZImagePromptEncoder(pipe)
    prompt = "a lighthouse on a cliff above a stormy sea at dusk, oil painting, warm light"
    encoder.encode(prompt)
    cached: list[float] = []
    for _ in range(20):
        started = time.perf_counter()
        encoder.encode(prompt)
        cached.append(time.perf_counter() - started)
    encode_cached_s = statistics.median(cached)

    report: dict[str, Any] = {
        "step_ms": round(1000 * step_s, 2),
        "step_ms_spread": _spread([1000 * s for s in base]),
        "lora_step_ms": round(1000 * statistics.median(patched), 2),
        "lora_step_ratio": round(statistics.median(patched) / step_s, 4),
        "lora_step_ratio_pairs": _spread(ratios),
        "switch_ms": round(1000 * switch_s, 2),
        "switch_ms_spread": _spread([1000 * s for s in switches]),
        "prompt_encode_ms_cached": round(1000 * encode_cached_s, 4),
        "targets": TARGETS,
    }
    report["meets_targets"] = {
        "lora_step_ratio": report["lora_step_ratio"] <= 1.02,
        "switch_ms": switch_s < step_s,
        "prompt_encode_ms_cached": encode_cached_s < 0.05 * step_s,
    }
    report["details"] = {
        "width": int(config.dim),
        "heads": int(config.n_heads),
        "layers": int(config.n_layers),
        "refiners": int(config.n_refiner_layers),
        "transformer_params": sum(p.numel() for p in transformer.parameters()),
        "rank": args.rank,
        "lora_layers_per_file": len(bound[0].targets),
        "image_tokens": side * side,
        "text_tokens": args.text_tokens,
        "lora_read_ms_per_file": round(1000 * read_s, 1),
        "load_average": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
    }
    return report


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    logging.disable(logging.WARNING)
    print(json.dumps(run_benchmark(argv), sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
