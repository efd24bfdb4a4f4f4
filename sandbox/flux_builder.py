"""Tiny FLUX.1 models in the layouts people download, with seeded random weights, offline.

The real classes (diffusers ``FluxTransformer2DModel`` and ``AutoencoderKL``, transformers
``CLIPTextModel`` and ``T5EncoderModel``) at a tiny width, saved as:

- a diffusers folder (``FluxPipeline.from_pretrained`` reads it offline);
- BFL's single-file transformer (``flux1-dev.safetensors`` names: ``double_blocks.N.img_attn.qkv``,
  ``single_blocks.N.linear1``, ...) with separate ``ae.safetensors`` (BFL/ldm VAE names),
  ``clip_l.safetensors`` and ``t5xxl.safetensors`` (transformers names, as ComfyUI ships them);
- an all-in-one file as ComfyUI's checkpoint save writes it: ``model.diffusion_model.`` +
  ``vae.`` + ``text_encoders.clip_l.transformer.`` + ``text_encoders.t5xxl.transformer.``.

Shapes keep FLUX's relations (16 latent channels packed 2x2 into 64 inputs, a 4x MLP, a
4-block VAE so latents are 1/8 of the image, the T5 relative-attention table that tells its
head count) so the loader's "config from the tensors" path is the one real files take. Tiny
text encoders use 64-wide heads (CLIP-L's), so their head count is readable from the width.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.component_configs import CONFIG_ROOT
from sandbox.model_builder import _clip_to_ldm, _save, _seeded, _vae_to_ldm

Variant = Literal["dev", "schnell"]
StoreDtype = Literal["bf16", "fp16", "fp8"]

#: The tiny transformer: width 32 (2 heads of 16), one double and one single block.
TINY_HEAD_DIM = 16
TINY_HEADS = 2
TINY_CLIP_WIDTH = 64
TINY_T5_WIDTH = 32


def _read(component: str, name: str = "config.json") -> dict[str, Any]:
    return json.loads((CONFIG_ROOT / "flux1" / component / name).read_text(encoding="utf-8"))


def tiny_configs(variant: Variant = "dev", *, head_dim: int = TINY_HEAD_DIM, heads: int = TINY_HEADS,
                 double: int = 1, single: int = 1) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every component's config: the shipped real ones, shrunk."""
    from engine.arch.flux.convert import _rope_axes
    from engine.tokenizer import BOS_ID, EOS_ID, MAX_LENGTH, VOCAB_SIZE

    transformer = _read("transformer")
    transformer.update(
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        num_layers=double,
        num_single_layers=single,
        joint_attention_dim=TINY_T5_WIDTH,
        pooled_projection_dim=TINY_CLIP_WIDTH,
        guidance_embeds=variant == "dev",
        axes_dims_rope=_rope_axes(head_dim),
    )
    vae = _read("vae")
    vae.update(block_out_channels=[32, 32, 32, 32], layers_per_block=1)
    clip = _read("text_encoder")
    clip.update(hidden_size=TINY_CLIP_WIDTH, intermediate_size=37, num_attention_heads=TINY_CLIP_WIDTH // 64,
                num_hidden_layers=2, projection_dim=TINY_CLIP_WIDTH, max_position_embeddings=MAX_LENGTH,
                vocab_size=VOCAB_SIZE, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID)  # fmt: skip
    t5 = _read("text_encoder_2")
    t5.update(d_model=TINY_T5_WIDTH, d_ff=48, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2)
    scheduler = _read("scheduler" if variant == "dev" else "scheduler_schnell", "scheduler_config.json")
    return {"transformer": transformer, "vae": vae, "text_encoder": clip, "text_encoder_2": t5,
            "scheduler": scheduler}  # fmt: skip


def build_components(variant: Variant = "dev", seed: int = 0, **shape: int) -> dict[str, Any]:
    """The torch modules with seeded weights, float32, in eval mode."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    configs = tiny_configs(variant, **shape)
    _seeded(seed * 100 + 11)
    transformer = FluxTransformer2DModel.from_config(configs["transformer"])
    _seeded(seed * 100 + 12)
    vae = AutoencoderKL.from_config(configs["vae"])
    _seeded(seed * 100 + 13)
    clip = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    _seeded(seed * 100 + 14)
    t5 = T5EncoderModel(T5Config(**configs["text_encoder_2"]))
    generator = torch.Generator().manual_seed(seed * 100 + 19)
    with torch.no_grad():
        # Fresh networks are nearly silent; louder outputs make a LoRA's change visible.
        transformer.proj_out.weight.copy_(torch.randn(transformer.proj_out.weight.shape, generator=generator) * 0.5)
        for name, param in vae.decoder.named_parameters():
            if name.startswith("conv_out") and name.endswith("weight"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    components = {"transformer": transformer, "vae": vae, "text_encoder": clip, "text_encoder_2": t5,
                  "scheduler": FlowMatchEulerDiscreteScheduler.from_config(configs["scheduler"])}  # fmt: skip
    for module in components.values():
        if hasattr(module, "eval"):
            module.eval()
    return components


def _store(state: dict[str, Any], dtype: StoreDtype) -> dict[str, Any]:
    """Cast for saving: fp8 keeps matrices in float8_e4m3fn and vectors in bf16 (as fp8 files do)."""
    import torch

    half = torch.float16 if dtype == "fp16" else torch.bfloat16
    out = {}
    for key, tensor in state.items():
        if dtype == "fp8" and tensor.ndim >= 2:
            out[key] = tensor.to(torch.float8_e4m3fn).contiguous()
        else:
            out[key] = tensor.to(half).contiguous()
    return out


def transformer_bfl_state(transformer: Any) -> dict[str, Any]:
    from engine.arch.flux.convert import diffusers_to_bfl

    return diffusers_to_bfl({k: v.detach() for k, v in transformer.state_dict().items()})


def vae_bfl_state(vae: Any) -> dict[str, Any]:
    """``ae.safetensors`` names: the ldm VAE layout without ``first_stage_model.``."""
    state = _vae_to_ldm({k: v.detach() for k, v in vae.state_dict().items()}, dict(vae.config))
    return {k.removeprefix("first_stage_model."): v for k, v in state.items()}


def clip_state(clip: Any) -> dict[str, Any]:
    return _clip_to_ldm({k: v.detach() for k, v in clip.state_dict().items()}, "")


def t5_state(t5: Any) -> dict[str, Any]:
    state = {k: v.detach() for k, v in t5.state_dict().items()}
    state.setdefault("shared.weight", t5.get_input_embeddings().weight.detach())
    state.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight; files carry one
    return state


@dataclass(frozen=True)
class FluxBuild:
    folder: Path  # the diffusers folder
    transformer: Path  # BFL single-file transformer
    vae: Path  # ae.safetensors
    clip_l: Path
    t5: Path
    all_in_one: Path


def save_diffusers_folder(components: dict[str, Any], folder: Path, variant: Variant) -> Path:
    from engine.arch.flux.t5_tokenizer import write_t5_tokenizer
    from engine.tokenizer import write_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text((CONFIG_ROOT / "flux1" / "model_index.json").read_text())
    for name, module in components.items():
        module.save_pretrained(str(folder / name), **({} if name == "scheduler" else {"safe_serialization": True}))
    write_tokenizer(folder / "tokenizer")
    write_t5_tokenizer(folder / "tokenizer_2", max_length=512 if variant == "dev" else 256)
    return folder


def build_flux(out: Path, variant: Variant = "dev", *, seed: int = 0, dtype: StoreDtype = "bf16",
               **shape: int) -> FluxBuild:  # fmt: skip
    """Write every layout of one tiny FLUX model under ``out``."""
    components = build_components(variant, seed, **shape)
    folder = save_diffusers_folder(components, out / f"flux-{variant}-diffusers", variant)
    transformer = _store(transformer_bfl_state(components["transformer"]), dtype)
    vae = _store(vae_bfl_state(components["vae"]), "bf16" if dtype == "fp8" else dtype)
    clip = _store(clip_state(components["text_encoder"]), "bf16" if dtype == "fp8" else dtype)
    t5 = _store(t5_state(components["text_encoder_2"]), "bf16" if dtype == "fp8" else dtype)
    suffix = "" if dtype == "bf16" else f"-{dtype}"
    paths = FluxBuild(
        folder=folder,
        transformer=out / f"flux1-{variant}{suffix}.safetensors",
        vae=out / "ae.safetensors",
        clip_l=out / "clip_l.safetensors",
        t5=out / "t5xxl.safetensors",
        all_in_one=out / f"flux1-{variant}-aio{suffix}.safetensors",
    )
    _save(transformer, paths.transformer, {})
    _save(vae, paths.vae, {})
    _save(clip, paths.clip_l, {})
    _save(t5, paths.t5, {})
    bundle = {f"model.diffusion_model.{k}": v for k, v in transformer.items()}
    bundle.update({f"vae.{k}": v for k, v in vae.items()})
    bundle.update({f"text_encoders.clip_l.transformer.{k}": v for k, v in clip.items()})
    bundle.update({f"text_encoders.t5xxl.transformer.{k}": v for k, v in t5.items()})
    _save(bundle, paths.all_in_one, {})
    return paths


def kohya_lora_state(shapes: dict[str, tuple[int, ...]], *, rank: int = 4, alpha: float = 2.0, seed: int = 0,
                     scale: float = 0.1, clip_layers: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:  # fmt: skip
    """A kohya sd-scripts FLUX LoRA (``lora_unet_<bfl layer>``) on every layer it trains: each 2-D
    weight of a BFL transformer (fused ``qkv`` and ``linear1``, modulation, in/out layers),
    plus ``lora_te1_`` CLIP-L layers if given (flattened module name -> (out, in))."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    layers = {k.removesuffix(".weight"): v for k, v in shapes.items() if k.endswith(".weight") and len(v) == 2}
    named = [("lora_unet_" + name.replace(".", "_"), shape) for name, shape in sorted(layers.items())]
    named += [("lora_te1_" + name, shape) for name, shape in sorted((clip_layers or {}).items())]
    for name, (out, inner) in named:
        state[f"{name}.lora_down.weight"] = torch.randn(rank, inner, generator=generator) * scale
        state[f"{name}.lora_up.weight"] = torch.randn(out, rank, generator=generator) * scale
        state[f"{name}.alpha"] = torch.tensor(float(alpha))
    return state


def write_kohya_lora(transformer: Path, path: Path, *, rank: int = 4, alpha: float = 2.0, seed: int = 0,
                     clip_l: Path | None = None) -> Path:  # fmt: skip
    """``write`` a kohya FLUX LoRA fitting the BFL transformer file ``transformer`` (its shapes
    read from the header), with kohya's metadata, bf16 as sd-scripts saves."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(transformer), framework="pt") as handle:
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    clip_layers = None
    if clip_l is not None:
        with safe_open(str(clip_l), framework="pt") as handle:
            clip_layers = {"text_model_" + k.removesuffix(".weight").removeprefix("text_model.").replace(".", "_"):
                           tuple(handle.get_slice(k).get_shape()) for k in handle.keys()
                           if k.endswith(("q_proj.weight", "v_proj.weight"))}  # fmt: skip
    state = kohya_lora_state(shapes, rank=rank, alpha=alpha, seed=seed, clip_layers=clip_layers)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"ss_network_module": "networks.lora_flux", "ss_base_model_version": "flux1",
                "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
                "modelspec.architecture": "flux-1-dev/lora"}  # fmt: skip
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, str(path), metadata)
    return path
