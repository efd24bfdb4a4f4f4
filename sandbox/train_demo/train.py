"""Train the demo's tiny SD 1.5-architecture model from scratch, then its LoRAs.

    python -m sandbox train-demo --out DIR [--device cuda] [--seed 0] [--scale 1.0]

Offline and seeded. Stages, each bounded by a step count and a time budget (whichever ends
first, so one run fits a rented GPU's minutes; the report says how many steps each took):

1. Render the scene set (:mod:`sandbox.train_demo.scenes`): base scenes, and the pixel-art,
   sepia and Captain Nova sets the LoRAs learn from.
2. The VAE (encoder and decoder on every set, so it can draw the styles), then a decoder-only
   stage on the frozen latents (sharper edges). Its latents are scaled so that SD 1.5's
   ``scaling_factor`` (0.18215) gives them unit variance, as the pipeline expects.
3. The UNet and the CLIP text encoder together on the base scenes: epsilon prediction on SD
   1.5's own noise schedule, min-SNR weighting, captions dropped 10% of the time (for CFG),
   an EMA of the weights.
4. Each LoRA by construction: fine-tune every conv and linear weight of the UNet (and, for the
   character, of the text encoder) on that style's set, then extract the LoRA from
   W_tuned - W_base by a per-layer SVD (what kohya's ``extract_lora_from_models.py`` does),
   saved in kohya's key format (LoCon for the 3x3 convs) with honest metadata.

Writes ``atelier-demo-sd15.safetensors`` (fp16, ldm single-file layout), ``configs.json``,
the three LoRAs, ``report.json`` (losses, steps, seconds, measures) and ``preview.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sandbox.train_demo import measures, scenes

CHECKPOINT = "atelier-demo-sd15.safetensors"
UNET_CONFIG = {
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "sample_size": scenes.SIZE // 8,
}
VAE_CONFIG = {
    "block_out_channels": [16, 32, 48, 48],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": scenes.SIZE,
}


@dataclass(frozen=True)
class LoraSpec:
    """One demo LoRA: which scene set it learns and which components it tunes."""

    name: str
    style: str
    text_encoder: bool
    #: Share of each batch drawn from the base set (prior preservation: the trigger matters).
    base_share: float
    description: str
    category: str


LORAS = (
    LoraSpec("pixel-art", "pixel", False, 0.0,
             "Pixel art: the scene as hard 8x8 cells from a 16-colour palette.", "style"),
    LoraSpec("sepia", "sepia", False, 0.0,
             "An old photograph: every colour in warm sepia browns.", "style"),
    LoraSpec("captain-nova", "nova", True, 0.5,
             "Captain Nova, a space explorer in a purple suit and red scarf, standing large in the scene.",
             "character"),
)  # fmt: skip


@dataclass
class Budget:
    """A stage ends at ``steps`` or after ``seconds``, whichever comes first."""

    steps: int
    seconds: float
    started: float = field(default_factory=time.perf_counter)

    def progress(self, step: int) -> float:
        return max(step / self.steps, (time.perf_counter() - self.started) / self.seconds)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def component_configs() -> dict[str, dict[str, Any]]:
    """SD 1.5's shipped configs, shrunk: what the checkpoint's config sidecar holds."""
    from engine.component_configs import shipped_configs
    from sandbox.model_builder import _tiny_text_encoder

    configs = shipped_configs("sd15")
    configs["unet"].update(UNET_CONFIG)
    configs["vae"].update(VAE_CONFIG)
    configs["text_encoder"] = _tiny_text_encoder(pad_token_id=49407)
    return configs


def _say(text: str) -> None:
    print(f"[train-demo] {text}", flush=True)


# ---------------------------------------------------------------------------------------------
# Data


def _render_chunk(args: tuple[int, int, str]) -> tuple[np.ndarray, list[str]]:
    count, seed, style = args
    return scenes.make_set(count, seed, style)


def render_set(count: int, seed: int, style: str, workers: int) -> tuple[np.ndarray, list[str]]:
    """``count`` scenes of ``style``, rendered in chunks (each chunk seeded by its index)."""
    chunk = 250
    jobs = [(min(chunk, count - start), seed * 10_000 + start // chunk, style) for start in range(0, count, chunk)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_render_chunk, jobs))
    else:
        parts = [_render_chunk(job) for job in jobs]
    return np.concatenate([p[0] for p in parts]), [c for p in parts for c in p[1]]


def tokenizer() -> Any:
    import tempfile

    from engine.tokenizer import load_tokenizer, write_tokenizer

    folder = Path(tempfile.mkdtemp(prefix="atelier-tok-"))
    return load_tokenizer(write_tokenizer(folder))


def token_ids(tok: Any, captions: Sequence[str]) -> Any:
    """Token ids as the pipeline makes them (padded to 77 with the end token, no mask)."""
    return tok(list(captions), padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Training


def _autocast(device: str) -> Any:
    import torch

    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def _lr(base: float, progress: float, step: int, warmup: int = 100) -> float:
    return base * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _batch_images(images: Any, index: Any, device: str) -> Any:
    import torch

    x = images[index].to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 127.5 - 1
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _edge_l1(a: Any, b: Any) -> Any:
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean()


def train_vae(vae: Any, images: Any, *, budget: Budget, decoder_budget: Budget | None, batch: int, lr: float,
              device: str, seed: int, log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """Encoder and decoder (L1 + edge L1 + a little KL), then the decoder alone."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    report: dict[str, Any] = {}
    for stage, stage_budget in (("vae", budget), ("decoder", decoder_budget)):
        if stage_budget is None:
            continue
        stage_budget.started = time.perf_counter()
        params = list(vae.parameters()) if stage == "vae" else list(vae.decoder.parameters()) + list(
            vae.post_quant_conv.parameters())
        vae.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        losses = []
        step = 0
        while step < stage_budget.steps and stage_budget.elapsed() < stage_budget.seconds:
            for group in opt.param_groups:
                group["lr"] = _lr(lr, stage_budget.progress(step), step)
            index = torch.randint(0, images.shape[0], (batch,), generator=generator)
            x = _batch_images(images, index, device)
            with _autocast(device):
                if stage == "vae":
                    posterior = vae.encode(x).latent_dist
                    z = posterior.sample()
                    kl = posterior.kl().mean() / z[0].numel()
                else:
                    with torch.no_grad():
                        z = vae.encode(x).latent_dist.mean
                    kl = torch.zeros((), device=x.device)
                out = vae.decode(z).sample
            out = out.float()
            loss = (out - x).abs().mean() + 0.5 * _edge_l1(out, x) + 1e-4 * kl.float()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            if step % 200 == 0:
                log(f"{stage} step {step} loss {np.mean(losses[-50:]):.4f} ({stage_budget.elapsed():.0f} s)")
            step += 1
        report[stage] = {"steps": step, "seconds": round(stage_budget.elapsed(), 1),
                         "loss_first": round(float(np.mean(losses[:20])), 4) if losses else None,
                         "loss_last": round(float(np.mean(losses[-50:])), 4) if losses else None}  # fmt: skip
        log(f"{stage}: {report[stage]}")
    vae.requires_grad_(False)
    return report


def load_checkpoint(path: Path, configs: dict[str, Any]) -> dict[str, Any]:
    """UNet, VAE and text encoder of a checkpoint this script wrote, through diffusers'
    single-file loader (the engine's own path), in float32."""
    import tempfile

    import torch
    from diffusers import StableDiffusionPipeline

    from engine.component_configs import write_config_folder

    folder = write_config_folder(Path(tempfile.mkdtemp(prefix="atelier-cfg-")), "sd15", configs)
    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(folder), local_files_only=True,
                                                    torch_dtype=torch.float32, safety_checker=None,
                                                    requires_safety_checker=False)  # fmt: skip
    return {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder}


def fold_latent_scale(vae: Any, images: Any, device: str, scaling_factor: float) -> float:
    """Scale the encoder's mean (and the decoder's input to match) so that latents times
    ``scaling_factor`` have unit variance: the contract SD 1.5 pipelines assume."""
    import torch

    with torch.no_grad(), _autocast(device):
        sample = _batch_images(images, torch.arange(min(256, images.shape[0])), device)
        std = float(vae.encode(sample).latent_dist.mean.float().std())
    s = 1.0 / (scaling_factor * std)
    with torch.no_grad():
        c = vae.config.latent_channels
        vae.quant_conv.weight[:c] *= s
        vae.quant_conv.bias[:c] *= s
        vae.quant_conv.bias[c:] += 2 * math.log(s)  # log-variance follows the mean's scale
        vae.post_quant_conv.weight /= s
    return s


def encode_all(vae: Any, images: Any, device: str, scaling_factor: float) -> Any:
    """Every image and its mirror image as scaled latent means (what the UNet learns)."""
    import torch

    out = []
    with torch.no_grad(), _autocast(device):
        for start in range(0, images.shape[0], 256):
            x = images[start : start + 256].to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
            for flipped in (x, x.flip(-1)):
                out.append(vae.encode(flipped).latent_dist.mean.float() * scaling_factor)
    # Interleaved per chunk: rebuild (originals..., mirrors...) in the images' order.
    originals = torch.cat(out[0::2])
    mirrors = torch.cat(out[1::2])
    return torch.cat([originals, mirrors])


def _alphas_cumprod(device: str) -> Any:
    """SD 1.5's noise schedule (scaled_linear, 0.00085 to 0.012, 1000 steps)."""
    import torch

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float().to(device)


def _weights(module: Any, *, linear_only: bool = False) -> Iterable[Any]:
    """The conv and linear weights of ``module``: exactly what a LoRA can carry."""
    import torch

    kinds = (torch.nn.Linear,) if linear_only else (torch.nn.Linear, torch.nn.Conv2d)
    for child in module.modules():
        if isinstance(child, kinds):
            yield child.weight


def train_denoiser(
    unet: Any, text_encoder: Any, latents: Any, ids: Any, *, budget: Budget, batch: int, lr: float,
    device: str, seed: int, log: Callable[[str], None], label: str, train_text_encoder: bool,
    lora_weights_only: bool = False, ema: float | None = None, base_latents: Any = None, base_ids: Any = None,
    base_share: float = 0.0, caption_dropout: float = 0.1, empty_ids: Any = None, snr_gamma: float | None = 5.0,
    warmup: int = 100,
) -> dict[str, Any]:  # fmt: skip
    """Epsilon prediction with min-SNR-5 weighting; returns the losses and, with ``ema``, the
    EMA weights are copied into the models at the end."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    alphas = _alphas_cumprod(device)
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    if lora_weights_only:
        params = list(_weights(unet))
        if train_text_encoder:
            params += list(_weights(text_encoder, linear_only=True))
    else:
        params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text_encoder else [])
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0 if lora_weights_only else 0.01)
    shadow = [p.detach().clone() for p in params] if ema else None
    losses: list[float] = []
    step = 0
    budget.started = time.perf_counter()
    while step < budget.steps and budget.elapsed() < budget.seconds:
        for group in opt.param_groups:
            group["lr"] = _lr(lr, budget.progress(step), step, warmup)
        n_base = int(round(batch * base_share)) if base_latents is not None else 0
        index = torch.randint(0, latents.shape[0], (batch - n_base,), generator=generator)
        x0, tokens = latents[index], ids[index]
        if n_base:
            extra = torch.randint(0, base_latents.shape[0], (n_base,), generator=generator)
            x0 = torch.cat([x0, base_latents[extra]])
            tokens = torch.cat([tokens, base_ids[extra]])
        x0, tokens = x0.to(device), tokens.to(device)
        if caption_dropout and empty_ids is not None:
            drop = torch.rand(tokens.shape[0], generator=generator) < caption_dropout
            tokens = torch.where(drop[:, None].to(device), empty_ids.to(device)[None], tokens)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        a = alphas[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        snr = a / (1 - a)
        # min-SNR weighting for the base (layout first); none for the styles, whose look is
        # fine detail that only low-noise steps teach.
        weight = (snr.clamp(max=snr_gamma) / snr).flatten() if snr_gamma else torch.ones_like(snr).flatten()
        with _autocast(device):
            context = text_encoder(tokens).last_hidden_state
            pred = unet(xt, t, context).sample
        loss = (((pred.float() - noise) ** 2).mean((1, 2, 3)) * weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if shadow is not None:
            decay = min(ema, (1 + step) / (10 + step))  # type: ignore[type-var]
            with torch.no_grad():
                torch._foreach_lerp_(shadow, [p.detach() for p in params], 1 - decay)
        losses.append(float(loss.detach()))
        if step % 250 == 0:
            log(f"{label} step {step} loss {np.mean(losses[-100:]):.4f} ({budget.elapsed():.0f} s)")
        step += 1
    if shadow is not None:
        with torch.no_grad():
            for p, s in zip(params, shadow, strict=True):
                p.copy_(s)
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    report = {"steps": step, "batch": batch, "lr": lr, "seconds": round(budget.elapsed(), 1),
              "loss_first": round(float(np.mean(losses[:50])), 4) if losses else None,
              "loss_last": round(float(np.mean(losses[-200:])), 4) if losses else None}  # fmt: skip
    log(f"{label}: {report}")
    return report


# ---------------------------------------------------------------------------------------------
# LoRA extraction


def _te_module(name: str) -> str:
    return name if name.startswith("text_model.") else "text_model." + name


def extract_lora(
    base: dict[str, Any], tuned: dict[str, Any], *, rank: int, conv_rank: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """kohya LoRA/LoCon tensors approximating ``tuned - base`` layer by layer (truncated SVD).

    ``base``/``tuned``: {"unet": module, "text_encoder": module}. Alpha equals the rank (scale
    1), so the file's ΔW is up @ down exactly. Returns (state dict, stats).
    """
    import torch

    state: dict[str, Any] = {}
    kept = total = 0.0
    layers = 0
    for component, prefix in (("unet", "lora_unet_"), ("text_encoder", "lora_te_")):
        if component not in tuned:
            continue
        tuned_modules = dict(tuned[component].named_modules())
        for name, module in base[component].named_modules():
            if not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                continue
            if component == "text_encoder" and not isinstance(module, torch.nn.Linear):
                continue
            delta = (tuned_modules[name].weight.detach().float() - module.weight.detach().float()).cpu()
            norm = float(delta.norm())
            if norm <= 1e-6 * float(module.weight.norm()):
                continue
            matrix = delta.reshape(delta.shape[0], -1)
            conv = delta.ndim == 4 and delta.shape[2:] != (1, 1)
            r = min(conv_rank if conv else rank, *matrix.shape)
            u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
            root = s[:r].sqrt()
            up = u[:, :r] * root[None]
            down = root[:, None] * vh[:r]
            kept += float((s[:r] ** 2).sum())
            total += float((s**2).sum())
            layers += 1
            key = prefix + (name if component == "unet" else _te_module(name)).replace(".", "_")
            if delta.ndim == 4:
                down = down.reshape(r, *delta.shape[1:])
                up = up.reshape(delta.shape[0], r, 1, 1)
            state[f"{key}.lora_down.weight"] = down.contiguous()
            state[f"{key}.lora_up.weight"] = up.contiguous()
            state[f"{key}.alpha"] = torch.tensor(float(r))
    return state, {"layers": layers, "energy_kept": round(kept / max(total, 1e-12), 4)}


def apply_lora(models: dict[str, Any], state: dict[str, Any], weight: float) -> None:
    """Add ``weight`` x the file's ΔW to the models in place (for the previews)."""
    import torch

    index = {}
    for component, prefix in (("unet", "lora_unet_"), ("text_encoder", "lora_te_")):
        for name, module in models[component].named_modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                key = prefix + (name if component == "unet" else _te_module(name)).replace(".", "_")
                index[key] = module
    with torch.no_grad():
        for key in {k.rsplit(".", 2)[0] for k in state if k.endswith("lora_down.weight")}:
            down, up = state[f"{key}.lora_down.weight"].float(), state[f"{key}.lora_up.weight"].float()
            delta = up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)
            weight_tensor = index[key].weight
            weight_tensor += weight * delta.reshape(weight_tensor.shape).to(weight_tensor)


# ---------------------------------------------------------------------------------------------
# Previews and saving


def pipeline(unet: Any, vae: Any, text_encoder: Any, tok: Any, configs: dict[str, Any]) -> Any:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    scheduler = DPMSolverMultistepScheduler.from_config(configs["scheduler"], use_karras_sigmas=True)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe: Any, prompts: Sequence[str], seed: int, steps: int, device: str) -> list[np.ndarray]:
    import torch

    images = []
    for i, prompt in enumerate(prompts):
        generator = torch.Generator("cpu").manual_seed(seed + i)
        with torch.no_grad():
            out = pipe(prompt, num_inference_steps=steps, guidance_scale=7.0, generator=generator,
                       height=scenes.SIZE, width=scenes.SIZE, output_type="np").images[0]  # fmt: skip
        images.append((out * 255).round().clip(0, 255).astype(np.uint8))
    return images


def save_checkpoint(unet: Any, vae: Any, text_encoder: Any, path: Path) -> None:
    """fp16, in the original single-file (ldm) layout, as A1111/Civitai files are."""
    import copy

    import torch

    from sandbox.model_builder import save_single_file

    halves = {}
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        half = copy.deepcopy(module).to("cpu", torch.float16)
        halves[name] = half
    save_single_file(halves, path, "sd15")


def lora_metadata(spec: LoraSpec, rank: int, conv_rank: int, tune: dict[str, Any], stats: dict[str, Any],
                  captions: Sequence[str], seed: int) -> dict[str, str]:  # fmt: skip
    """What kohya's extraction writes, plus the training this LoRA really had.

    No ``ss_tag_frequency``: an extracted LoRA has no dataset of its own (kohya's extraction
    writes none either), and readers take ``modelspec.trigger_phrase`` instead.
    """
    from sandbox.model_builder import BASE_MODEL_VERSION, MODELSPEC

    trigger = scenes.TRIGGERS[spec.style]
    comment = (
        f"extracted by per-layer SVD from a full fine-tune of every conv and linear weight of the "
        f"UNet{' and text encoder' if spec.text_encoder else ''} of atelier-demo-sd15: "
        f"{tune['steps']} steps at batch {tune['batch']}, lr {tune['lr']}, seed {seed}, "
        f"{len(captions)} procedural '{trigger}' scenes; {stats['energy_kept']:.1%} of the "
        f"difference's energy kept (python -m sandbox train-demo)"
    )
    return {
        "ss_base_model_version": BASE_MODEL_VERSION["sd15"],
        "ss_output_name": spec.name,
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(rank)),
        "ss_network_args": json.dumps({"conv_dim": str(conv_rank), "conv_alpha": str(float(conv_rank))}),
        "ss_training_comment": comment,
        "ss_seed": str(seed),
        "ss_max_train_steps": str(tune["steps"]),
        "ss_learning_rate": str(tune["lr"]),
        "ss_text_encoder_lr": str(tune["lr"] if spec.text_encoder else 0),
        "modelspec.architecture": f"{MODELSPEC['sd15']}/lora",
        "modelspec.title": spec.name,
        "modelspec.description": spec.description,
        "modelspec.trigger_phrase": trigger,
    }


def save_lora(state: dict[str, Any], path: Path, metadata: dict[str, str]) -> None:
    import torch

    from sandbox.model_builder import _save

    _save({k: v.to(torch.float16).contiguous() for k, v in state.items()}, path, metadata)


# ---------------------------------------------------------------------------------------------
# The run


PREVIEW_PROMPTS = (
    "a lighthouse by the sea at noon",
    "a lighthouse by the sea at night",
    "a house and a tree in a field at dusk",
    "a lighthouse, a house and a tree in a field at dawn",
)
STRIP = (0.0, 0.3, 0.6, 1.0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    started = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    device = args.device
    scale = args.scale

    def log(text: str) -> None:
        line = f"{time.perf_counter() - started:7.1f}s {text}"
        _say(line)

    torch.manual_seed(args.seed)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # No cuDNN autotuning: each new batch shape costs seconds, more than a short stage gains.
        torch.backends.cudnn.benchmark = False
    configs = component_configs()
    report: dict[str, Any] = {"seed": args.seed, "device": device, "command": " ".join(sys.argv), "configs": configs}

    # 1. Data.
    counts = {"base": args.base_scenes, "pixel": args.style_scenes, "sepia": args.style_scenes, "nova": args.style_scenes}
    sets: dict[str, tuple[np.ndarray, list[str]]] = {}
    for style, count in counts.items():
        sets[style] = render_set(count, args.seed, style, args.workers)
    log(f"rendered {sum(counts.values())} scenes")
    images = {style: torch.from_numpy(arr) for style, (arr, _) in sets.items()}
    if device.startswith("cuda"):
        images = {style: t.to(device) for style, t in images.items()}
    tok = tokenizer()
    ids = {style: token_ids(tok, caps) for style, (_, caps) in sets.items()}
    empty = token_ids(tok, [""])[0]

    # 2. VAE on every set (or the one of the checkpoint resumed from).
    sf = configs["vae"]["scaling_factor"]
    resumed = load_checkpoint(args.resume, configs) if args.resume else None
    if resumed is not None:
        vae = resumed["vae"].to(device)
        report["resumed_from"] = str(args.resume)
    else:
        vae = AutoencoderKL.from_config(configs["vae"]).to(device)
        all_images = torch.cat(list(images.values()))
        report["vae"] = train_vae(
            vae, all_images, budget=Budget(int(args.vae_steps), args.vae_seconds * scale),
            decoder_budget=Budget(int(args.decoder_steps), args.decoder_seconds * scale),
            batch=args.vae_batch, lr=args.vae_lr, device=device, seed=args.seed, log=log,
        )  # fmt: skip
        report["vae"]["latent_rescale"] = round(fold_latent_scale(vae, all_images, device, sf), 4)
        del all_images
    latents = {style: encode_all(vae, imgs, device, sf) for style, imgs in images.items()}
    ids = {style: torch.cat([t, t]) for style, t in ids.items()}  # originals, then mirrors
    log(f"latents: std {float(latents['base'].std()):.3f}")

    # 3. UNet and text encoder on the base scenes.
    if resumed is not None:
        unet, text_encoder = resumed["unet"].to(device), resumed["text_encoder"].to(device)
        unet.train()
        text_encoder.train()
    else:
        unet = UNet2DConditionModel.from_config(configs["unet"]).to(device)
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])).to(device)
    report["params"] = {name: sum(p.numel() for p in m.parameters())
                        for name, m in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))}  # fmt: skip
    log(f"parameters: {report['params']}")
    report["base"] = train_denoiser(
        unet, text_encoder, latents["base"], ids["base"], budget=Budget(int(args.base_steps), args.base_seconds * scale),
        batch=args.batch, lr=args.lr, device=device, seed=args.seed, log=log, label="base", train_text_encoder=True,
        ema=args.ema or None, empty_ids=empty, warmup=args.warmup,
    )  # fmt: skip
    for module in (unet, vae, text_encoder):
        module.eval()
    save_checkpoint(unet, vae, text_encoder, out / CHECKPOINT)
    (out / "configs.json").write_text(json.dumps(configs, indent=1) + "\n", encoding="utf-8")
    log(f"saved {CHECKPOINT}")

    # 4. LoRAs.
    import copy

    report["loras"] = {}
    lora_states = {}
    for spec in LORAS:
        tuned_unet, tuned_te = copy.deepcopy(unet), copy.deepcopy(text_encoder)
        tuned_unet.train()
        tuned_te.train()
        tune = train_denoiser(
            tuned_unet, tuned_te, latents[spec.style], ids[spec.style],
            budget=Budget(int(args.lora_steps), args.lora_seconds * scale), batch=args.lora_batch or args.batch, lr=args.lora_lr,
            device=device, seed=args.seed + 1 + LORAS.index(spec), log=log, label=spec.name,
            train_text_encoder=spec.text_encoder, lora_weights_only=True, snr_gamma=args.lora_snr_gamma, warmup=args.warmup,
            base_latents=latents["base"] if spec.base_share else None,
            base_ids=ids["base"] if spec.base_share else None, base_share=spec.base_share, empty_ids=empty,
        )  # fmt: skip
        tuned = {"unet": tuned_unet}
        if spec.text_encoder:
            tuned["text_encoder"] = tuned_te
        state, stats = extract_lora({"unet": unet, "text_encoder": text_encoder}, tuned, rank=args.rank,
                                    conv_rank=args.conv_rank)  # fmt: skip
        metadata = lora_metadata(spec, args.rank, args.conv_rank, tune, stats, sets[spec.style][1], args.seed)
        save_lora(state, out / f"{spec.name}.safetensors", metadata)
        for extra in args.extra_rank:  # the same difference at other ranks, to compare
            rank, conv_rank = (int(v) for v in extra.split(":"))
            more, more_stats = extract_lora({"unet": unet, "text_encoder": text_encoder}, tuned, rank=rank,
                                            conv_rank=conv_rank)  # fmt: skip
            more_meta = lora_metadata(spec, rank, conv_rank, tune, more_stats, sets[spec.style][1], args.seed)
            save_lora(more, out / "extras" / f"{spec.name}-r{rank}.safetensors", more_meta)
            stats[f"energy_kept_r{rank}"] = more_stats["energy_kept"]
        if args.preview_steps:
            stats["tuned_measure"] = tuned_measure(spec, tuned_unet, vae, tuned_te, tok, configs, args)
        lora_states[spec.name] = {k: v.to(torch.float16).float() for k, v in state.items()}
        report["loras"][spec.name] = {"tune": tune, "extraction": stats,
                                      "bytes": (out / f"{spec.name}.safetensors").stat().st_size}  # fmt: skip
        log(f"{spec.name}: {stats}")
        del tuned_unet, tuned_te

    # 5. Previews and measures, through the extracted (fp16) LoRAs.
    if args.preview_steps:
        report["measures"] = previews(unet, vae, text_encoder, tok, configs, lora_states, args, out, log)
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    log(f"done in {report['seconds']} s")
    return report


def tuned_measure(spec: LoraSpec, unet: Any, vae: Any, text_encoder: Any, tok: Any, configs: dict[str, Any],
                  args: argparse.Namespace) -> float:  # fmt: skip
    """The style's measure on the fine-tuned model itself (before extraction), for comparison."""
    prompt = ("captain nova, " if spec.style == "nova" else "") + "a lighthouse by the sea at noon"
    image = sample(pipeline(unet.eval(), vae, text_encoder.eval(), tok, configs), [prompt], args.seed,
                   args.preview_steps, args.device)[0]  # fmt: skip
    measure = {"pixel": measures.blockiness, "sepia": measures.sepia_distance, "nova": measures.suit_share}
    return round(measure[spec.style](image), 3)


def previews(unet: Any, vae: Any, text_encoder: Any, tok: Any, configs: dict[str, Any],
             loras: dict[str, dict[str, Any]], args: argparse.Namespace, out: Path,
             log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    import copy

    from PIL import Image

    steps = args.preview_steps
    rows: list[list[np.ndarray]] = []
    result: dict[str, Any] = {}
    pipe = pipeline(unet, vae, text_encoder, tok, configs)
    base = sample(pipe, PREVIEW_PROMPTS, args.seed, steps, args.device)
    rows.append(base)
    result["sky_luma"] = dict(zip(PREVIEW_PROMPTS, (round(measures.sky_luma(i), 1) for i in base), strict=True))

    def with_loras(stack: dict[str, float], prompts: Sequence[str]) -> list[np.ndarray]:
        models = {"unet": copy.deepcopy(unet), "text_encoder": copy.deepcopy(text_encoder)}
        for name, weight in stack.items():
            apply_lora(models, loras[name], weight)
        p = pipeline(models["unet"], vae, models["text_encoder"], tok, configs)
        return sample(p, prompts, args.seed, steps, args.device)

    prompt = "a lighthouse by the sea at noon"
    for name, measure in (("pixel-art", measures.blockiness), ("sepia", measures.sepia_distance)):
        strip = [with_loras({name: w}, [prompt])[0] for w in STRIP]
        rows.append(strip)
        result[name] = {str(w): round(measure(i), 3) for w, i in zip(STRIP, strip, strict=True)}
    nova = with_loras({"captain-nova": 1.0}, ["captain nova, a lighthouse by the sea at noon", prompt])
    stack = with_loras({"pixel-art": 1.0, "captain-nova": 1.0}, ["captain nova, a lighthouse by the sea at noon"])
    rows.append([*nova, stack[0], base[0]])
    result["captain-nova"] = {"suit_with_trigger": round(measures.suit_share(nova[0]), 3),
                              "suit_without_trigger": round(measures.suit_share(nova[1]), 3),
                              "suit_base": round(measures.suit_share(base[0]), 3)}  # fmt: skip
    result["stack"] = {"blockiness": round(measures.blockiness(stack[0]), 3),
                       "suit": round(measures.suit_share(stack[0]), 3)}  # fmt: skip
    grid = np.concatenate([np.concatenate(row, 1) for row in rows], 0)
    Image.fromarray(grid).save(out / "preview.png")
    log(f"measures: {json.dumps(result)}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox train-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every time budget")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--base-scenes", type=int, default=8000)
    parser.add_argument("--style-scenes", type=int, default=2000)
    parser.add_argument("--vae-steps", type=int, default=4000)
    parser.add_argument("--vae-seconds", type=float, default=55)
    parser.add_argument("--decoder-steps", type=int, default=2000)
    parser.add_argument("--decoder-seconds", type=float, default=20)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--base-steps", type=int, default=12000)
    parser.add_argument("--base-seconds", type=float, default=170)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--lora-steps", type=int, default=3000)
    parser.add_argument("--lora-seconds", type=float, default=28)
    parser.add_argument("--lora-lr", type=float, default=3e-4)
    parser.add_argument("--warmup", type=int, default=100, help="learning-rate warm-up steps")
    parser.add_argument("--lora-batch", type=int, default=0, help="0: --batch")
    parser.add_argument("--lora-snr-gamma", type=float, default=0.0, help="min-SNR gamma for the LoRAs (0: none)")
    parser.add_argument("--resume", type=Path, help="continue from a checkpoint this command wrote (VAE kept)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--conv-rank", type=int, default=8)
    parser.add_argument("--extra-rank", action="append", default=[], metavar="RANK:CONV_RANK",
                        help="also extract each LoRA at these ranks, into OUT/extras (repeatable)")
    parser.add_argument("--preview-steps", type=int, default=20)
    args = parser.parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
