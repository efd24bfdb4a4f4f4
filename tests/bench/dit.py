"""DiT LoRA benchmark: ``python -m tests.bench.dit --arch zimage|qwen_image|flux2`` prints one
JSON object (``python -m tests.bench.zimage`` is ``--arch zimage``).

The FLUX benchmark's figures (:mod:`tests.bench.flux`) for the diffusion transformers of issue
19, measured on this machine's CPU with each transformer cut to one block of each kind at its
real width (random weights, nothing downloaded): Z-Image one main block at 3840 (30 heads of
128); Qwen-Image one block at 3072 (24 heads); FLUX.2 Klein 4B one double and one single block
at 3072 (``--heads 32``: 9B's 4096). Tiny text encoders and VAEs come from the sandbox builders.
Real-rank LoRAs (rank 16, bf16) sit on every layer their trainers train, in the layout they
write (Z-Image: kohya/musubi on the official names, fused ``attention.qkv`` sliced; Qwen-Image:
musubi on diffusers' names; Klein: kohya on BFL's names, fused ``qkv`` sliced), and go through
the engine's own reader, binder and :class:`engine.patcher.WeightPatcher`.

- ``step_ms``: one transformer call (Turbo runs one row per step) on ``--image-tokens`` patch
  tokens and ``--text-tokens`` Qwen3 tokens, median of ``--samples`` samples interleaved with
  the patched ones (each the fastest of ``--repeat`` calls);
- ``lora_step_ratio``: median step with a 2-LoRA stack patched over the median base step
  (target <= 1.02);
- ``switch_ms``: changing to another 2-LoRA stack (restore and apply), median (target below one
  step);
- ``prompt_encode_ms_cached``: the same prompt encoded again (target below 5 % of a step).

One Z-Image block at 3840 holds about 0.2 B weights (0.8 GB in fp32, as much again for the
patcher's clean copies); Klein's two blocks at 3072 about 0.5 B: run it alone, ``nice -n 10``.
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
    parser = argparse.ArgumentParser(prog="python -m tests.bench.dit", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="zimage")
    parser.add_argument("--heads", type=int, default=None, help="default: the architecture's real count")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--refiners", type=int, default=0)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--samples", type=int, default=7, help="base and LoRA steps each (interleaved)")
    parser.add_argument("--repeat", type=int, default=3, help="calls per sample, the fastest kept")
    parser.add_argument("--switches", type=int, default=4)
    parser.add_argument("--image-tokens", type=int, default=64, help="2x2 latent patches (64: a 128x128 image)")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("/tmp/atelier-bench-dit"))
    args = parser.parse_args(argv)
    if args.heads is None:
        args.heads = {"zimage": 30, "qwen_image": 24, "flux2": 24}[args.arch]
    return args


def _kohya(shapes: dict[str, tuple[int, ...]], rank: int, seed: int, keep: Any = None) -> dict[str, Any]:
    """kohya-named rank-``rank`` pairs on every 2-D weight of ``shapes`` (names as given)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    for key, shape in sorted(shapes.items()):
        if not key.endswith(".weight") or len(shape) != 2 or (keep is not None and not keep(key)):
            continue
        name = "lora_unet_" + key.removesuffix(".weight").replace(".", "_")
        state[f"{name}.lora_down.weight"] = torch.randn(rank, shape[1], generator=generator) * 0.02
        state[f"{name}.lora_up.weight"] = torch.randn(shape[0], rank, generator=generator) * 0.02
        state[f"{name}.alpha"] = torch.tensor(rank / 2)
    return state


class ZImageBench:
    """Z-Image: official names (fused qkv) as kohya/musubi write them."""

    @staticmethod
    def build(args: argparse.Namespace) -> Any:
        from engine.arch.zimage.loading import pipeline
        from sandbox.zimage_builder import build_components, build_tokenizer

        parts = build_components(0, head_dim=args.head_dim, heads=args.heads, layers=args.layers, refiners=args.refiners)
        return pipeline(parts["transformer"], parts["vae"], parts["text_encoder"], build_tokenizer())

    @staticmethod
    def lora_state(pipe: Any, rank: int, seed: int) -> dict[str, Any]:
        from engine.arch.flux.loading import _meta
        from engine.arch.zimage.convert import to_original

        shapes = {k: tuple(v.shape) for k, v in pipe.transformer.state_dict().items()}
        original = {k: tuple(v.shape) for k, v in to_original(_meta(shapes)).items()}
        return _kohya(original, rank, seed, keep=lambda k: not k.startswith("cap_embedder.0"))

    @staticmethod
    def runtime() -> Any:
        from engine.arch.zimage.pipeline import RUNTIME

        return RUNTIME

    @staticmethod
    def inputs(pipe: Any, args: argparse.Namespace) -> dict[str, Any]:
        import torch

        config, g = pipe.transformer.config, torch.Generator().manual_seed(1)
        side = max(1, int(round(args.image_tokens**0.5)))
        return {"x": [torch.randn(config.in_channels, 1, 2 * side, 2 * side, generator=g)], "t": torch.tensor([0.5]),
                "cap_feats": [torch.randn(args.text_tokens, config.cap_feat_dim, generator=g)], "return_dict": False}  # fmt: skip

    @staticmethod
    def details(config: Any) -> dict[str, Any]:
        return {"width": int(config.dim), "heads": int(config.n_heads), "layers": int(config.n_layers),
                "refiners": int(config.n_refiner_layers)}  # fmt: skip


class QwenImageBench:
    """Qwen-Image: diffusers' names as musubi-tuner writes them."""

    @staticmethod
    def build(args: argparse.Namespace) -> Any:
        from engine.arch.qwen_image.loading import pipeline
        from sandbox.qwen_image_builder import build_components
        from sandbox.zimage_builder import build_tokenizer

        parts = build_components(0, heads=args.heads, head_dim=args.head_dim, layers=args.layers)
        return pipeline(parts["transformer"], parts["vae"], parts["text_encoder"], build_tokenizer())

    @staticmethod
    def lora_state(pipe: Any, rank: int, seed: int) -> dict[str, Any]:
        shapes = {k: tuple(v.shape) for k, v in pipe.transformer.state_dict().items()}
        return _kohya(shapes, rank, seed, keep=lambda k: k.startswith("transformer_blocks."))

    @staticmethod
    def runtime() -> Any:
        from engine.arch.qwen_image.pipeline import RUNTIME

        return RUNTIME

    @staticmethod
    def inputs(pipe: Any, args: argparse.Namespace) -> dict[str, Any]:
        import torch

        config, g = pipe.transformer.config, torch.Generator().manual_seed(1)
        side = max(1, int(round(args.image_tokens**0.5)))
        return {"hidden_states": torch.randn(1, side * side, config.in_channels, generator=g),
                "encoder_hidden_states": torch.randn(1, args.text_tokens, config.joint_attention_dim, generator=g),
                "encoder_hidden_states_mask": torch.ones(1, args.text_tokens, dtype=torch.long),
                "timestep": torch.tensor([0.5]), "img_shapes": [[(1, side, side)]], "return_dict": False}  # fmt: skip

    @staticmethod
    def details(config: Any) -> dict[str, Any]:
        return {"width": int(config.num_attention_heads * config.attention_head_dim),
                "heads": int(config.num_attention_heads), "layers": int(config.num_layers)}  # fmt: skip


class Flux2Bench:
    """FLUX.2 Klein: BFL's names (fused qkv, linear1) as kohya/musubi write them."""

    @staticmethod
    def build(args: argparse.Namespace) -> Any:
        from engine.arch.flux2.loading import pipeline
        from sandbox.flux2_builder import build_components
        from sandbox.zimage_builder import build_tokenizer

        parts = build_components(0, heads=args.heads, head_dim=args.head_dim)
        return pipeline(parts["transformer"], parts["vae"], parts["text_encoder"], build_tokenizer())

    @staticmethod
    def lora_state(pipe: Any, rank: int, seed: int) -> dict[str, Any]:
        from engine.arch.flux.loading import _meta
        from engine.arch.flux2.convert import to_bfl

        shapes = {k: tuple(v.shape) for k, v in pipe.transformer.state_dict().items()}
        return _kohya({k: tuple(v.shape) for k, v in to_bfl(_meta(shapes)).items()}, rank, seed)

    @staticmethod
    def runtime() -> Any:
        from engine.arch.flux2.pipeline import RUNTIME

        return RUNTIME

    @staticmethod
    def inputs(pipe: Any, args: argparse.Namespace) -> dict[str, Any]:
        import torch

        config, g = pipe.transformer.config, torch.Generator().manual_seed(1)
        side = max(1, int(round(args.image_tokens**0.5)))
        img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(side), torch.arange(side), torch.arange(1))
        txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(args.text_tokens))
        return {"hidden_states": torch.randn(1, side * side, config.in_channels, generator=g),
                "encoder_hidden_states": torch.randn(1, args.text_tokens, config.joint_attention_dim, generator=g),
                "timestep": torch.tensor([0.5]), "img_ids": img_ids[None], "txt_ids": txt_ids[None],
                "return_dict": False}  # fmt: skip

    @staticmethod
    def details(config: Any) -> dict[str, Any]:
        return {"width": int(config.num_attention_heads * config.attention_head_dim),
                "heads": int(config.num_attention_heads), "double_blocks": int(config.num_layers),
                "single_blocks": int(config.num_single_layers)}  # fmt: skip


ARCHS: dict[str, Any] = {"zimage": ZImageBench, "qwen_image": QwenImageBench, "flux2": Flux2Bench}


def write_loras(bench: Any, pipe: Any, folder: Path, rank: int, count: int) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"kohya-{index}.safetensors"
        state = bench.lora_state(pipe, rank, index)
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, str(path))
        paths.append(path)
    return paths


def run_benchmark(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch

    from engine.patcher import PATCHED, StackEntry, WeightPatcher

    args = parse_args(argv)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    bench = ARCHS[args.arch]
    pipe = bench.build(args)
    pipe.set_progress_bar_config(disable=True)
    runtime = bench.runtime()
    transformer = pipe.transformer
    paths = write_loras(bench, pipe, args.out / args.arch, args.rank, 4)
    read_started = time.perf_counter()
    files = [runtime.read_lora(p, label=p.stem, sha256=f"{i:064x}") for i, p in enumerate(paths)]
    read_s = (time.perf_counter() - read_started) / len(files)
    bound = [runtime.bind(f, pipe, model_name=f"bench-{args.arch}") for f in files]
    patcher = WeightPatcher(pipe, runtime.lora_components(pipe))
    stack_a = [StackEntry(bound[0], 0.8), StackEntry(bound[1], 0.6)]
    stack_b = [StackEntry(bound[2], 0.7), StackEntry(bound[3], 0.5)]
    inputs = bench.inputs(pipe, args)

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

    encoder = runtime.prompt_encoder(pipe, clip_skip=1, embeddings={})
    prompt = "a lighthouse on a cliff above a stormy sea at dusk, oil painting, warm light"
    encoder.encode(prompt)
    cached: list[float] = []
    for _ in range(20):
        started = time.perf_counter()
        encoder.encode(prompt)
        cached.append(time.perf_counter() - started)
    encode_cached_s = statistics.median(cached)

    report: dict[str, Any] = {
        "arch": args.arch,
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
    side = max(1, int(round(args.image_tokens**0.5)))
    report["details"] = {
        **bench.details(transformer.config),
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
