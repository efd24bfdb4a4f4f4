"""Tiny Z-Image models in the layouts people download, with seeded random weights, offline.

The real classes (diffusers ``ZImageTransformer2DModel`` and ``AutoencoderKL`` in FLUX.1's
16-channel layout, transformers ``Qwen3Model``) at a tiny width, and a tiny byte-level BPE
tokenizer built here with ``tokenizers`` (Qwen's real one has 151k pieces; this one has the 256
byte pieces and Qwen's special tokens, and the chat template Z-Image reads the prompt through).
Saved as:

- a diffusers folder (``ZImagePipeline.from_pretrained`` reads it offline);
- the official single-file transformer (``z_image_turbo_bf16.safetensors`` names:
  ``layers.N.attention.qkv``, ``x_embedder``, ``final_layer``), bf16 or fp8 (e4m3fn, plain or
  with ComfyUI's per-layer ``scale_weight``), beside ``ae.safetensors`` (FLUX.1's VAE, ldm names),
  ``qwen_3_4b.safetensors`` (transformers names under ``model.``, as ComfyUI ships it) and the
  tokenizer folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.component_configs import CONFIG_ROOT
from sandbox.flux_builder import vae_bfl_state
from sandbox.model_builder import _save, _seeded

StoreDtype = Literal["bf16", "fp8", "fp8_scaled"]

TINY_HEAD_DIM = 16
TINY_HEADS = 2
TINY_TEXT_WIDTH = 32
#: Qwen's special tokens, in its order after the vocabulary (ids here follow the 256 bytes).
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
#: Qwen3's chat template for one user turn with a generation prompt (thinking left on, as
#: ZImagePipeline asks): the text the real template gives for the pipeline's one message.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _read(component: str, name: str = "config.json") -> dict[str, Any]:
    return json.loads((CONFIG_ROOT / "zimage" / component / name).read_text(encoding="utf-8"))


def build_tokenizer(extra: tuple[str, ...] = ()) -> Any:
    """A ``Qwen2TokenizerFast`` over the 256 byte pieces (no merges) plus Qwen's special tokens
    (and ``extra`` ones after them: Qwen2.5-VL's vision tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    vocab = {char: index for index, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL) + list(extra))
    tokenizer = Qwen2TokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, bos_token=None, model_max_length=512)  # fmt: skip
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def write_tokenizer(folder: Path, extra: tuple[str, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer(extra).save_pretrained(str(folder))
    return folder


def tiny_configs(*, head_dim: int = TINY_HEAD_DIM, heads: int = TINY_HEADS, layers: int = 2,
                 refiners: int = 1, text_width: int = TINY_TEXT_WIDTH) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every component's config: the shipped real ones, shrunk."""
    from sandbox.flux_builder import _read as flux_read

    transformer = _read("transformer")
    quarter = head_dim // 4
    transformer.update(dim=heads * head_dim, n_heads=heads, n_kv_heads=heads, n_layers=layers,
                       n_refiner_layers=refiners, cap_feat_dim=text_width,
                       axes_dims=[quarter, (head_dim - quarter) // 2, head_dim - quarter - (head_dim - quarter) // 2])  # fmt: skip
    vae = flux_read("vae")
    vae.update(block_out_channels=[32, 32, 32, 32], layers_per_block=1)
    text = _read("text_encoder")
    text.update(hidden_size=text_width, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, vocab_size=256 + len(SPECIAL), max_window_layers=3,
                bos_token_id=256, eos_token_id=258)  # fmt: skip
    return {"transformer": transformer, "vae": vae, "text_encoder": text,
            "scheduler": _read("scheduler", "scheduler_config.json")}  # fmt: skip


def build_components(seed: int = 0, **shape: int) -> dict[str, Any]:
    """The torch modules with seeded weights, float32, in eval mode."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    configs = tiny_configs(**shape)
    _seeded(seed * 100 + 21)
    transformer = ZImageTransformer2DModel.from_config(configs["transformer"])
    _seeded(seed * 100 + 22)
    vae = AutoencoderKL.from_config(configs["vae"])
    _seeded(seed * 100 + 23)
    text = Qwen3Model(Qwen3Config(**configs["text_encoder"]))
    generator = torch.Generator().manual_seed(seed * 100 + 29)
    with torch.no_grad():
        # Fresh networks are nearly silent (diffusers zero-initialises Z-Image's last layer and
        # modulations): louder ones make a LoRA's change visible in the image.
        for name, param in transformer.named_parameters():
            if param.ndim >= 1 and (name.startswith("all_final_layer") or "adaLN" in name or param.abs().sum() == 0):
                if "norm" not in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
        for name, param in vae.decoder.named_parameters():
            if name.startswith("conv_out") and name.endswith("weight"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    components = {"transformer": transformer, "vae": vae, "text_encoder": text,
                  "scheduler": FlowMatchEulerDiscreteScheduler.from_config(configs["scheduler"])}  # fmt: skip
    for module in components.values():
        if hasattr(module, "eval"):
            module.eval()
    return components


def _store(state: dict[str, Any], dtype: StoreDtype) -> dict[str, Any]:
    """Cast for saving as the published files are: bf16; or fp8 (e4m3fn) matrices with vectors
    in bf16; ``fp8_scaled`` adds ComfyUI's per-layer ``scale_weight`` (W ≈ fp8 · scale, the
    scale chosen so the largest weight meets fp8's largest value) and its ``scaled_fp8`` marker."""
    import torch

    out: dict[str, Any] = {}
    for key, tensor in state.items():
        if dtype != "bf16" and tensor.ndim == 2 and key.endswith(".weight"):
            if dtype == "fp8_scaled":
                scale = tensor.abs().max().clamp(min=1e-12) / 448.0
                out[key] = (tensor / scale).to(torch.float8_e4m3fn).contiguous()
                out[key.removesuffix("weight") + "scale_weight"] = scale.reshape(()).to(torch.float32)
            else:
                out[key] = tensor.to(torch.float8_e4m3fn).contiguous()
        else:
            out[key] = tensor.to(torch.bfloat16).contiguous()
    if dtype == "fp8_scaled":
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def transformer_original_state(transformer: Any) -> dict[str, Any]:
    from engine.arch.zimage.convert import to_original

    return to_original({k: v.detach() for k, v in transformer.state_dict().items()})


def text_encoder_state(text: Any) -> dict[str, Any]:
    """ComfyUI's ``qwen_3_4b.safetensors`` names: the causal LM's ``model.`` prefix, no head."""
    return {f"model.{k}": v.detach() for k, v in text.state_dict().items()}


@dataclass(frozen=True)
class ZImageBuild:
    folder: Path  # the diffusers folder
    transformer: Path  # the official single-file transformer
    vae: Path  # ae.safetensors
    text_encoder: Path  # qwen_3_4b.safetensors
    tokenizer: Path  # the tokenizer folder


def save_diffusers_folder(components: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text((CONFIG_ROOT / "zimage" / "model_index.json").read_text())
    for name, module in components.items():
        module.save_pretrained(str(folder / name), **({} if name == "scheduler" else {"safe_serialization": True}))
    write_tokenizer(folder / "tokenizer")
    return folder


def build_zimage(out: Path, *, seed: int = 0, dtype: StoreDtype = "bf16", **shape: int) -> ZImageBuild:
    """Write every layout of one tiny Z-Image Turbo model under ``out``."""
    components = build_components(seed, **shape)
    folder = save_diffusers_folder(components, out / "zimage-turbo-diffusers")
    suffix = "bf16" if dtype == "bf16" else "fp8_e4m3fn" if dtype == "fp8" else "fp8_scaled"
    paths = ZImageBuild(
        folder=folder,
        transformer=out / f"z_image_turbo_{suffix}.safetensors",
        vae=out / "ae.safetensors",
        text_encoder=out / "qwen_3_4b.safetensors",
        tokenizer=write_tokenizer(out / "tokenizer"),
    )
    _save(_store(transformer_original_state(components["transformer"]), dtype), paths.transformer, {})
    _save(_store(vae_bfl_state(components["vae"]), "bf16"), paths.vae, {})
    _save(_store(text_encoder_state(components["text_encoder"]), "bf16"), paths.text_encoder, {})
    return paths


def kohya_lora_state(shapes: dict[str, tuple[int, ...]], *, rank: int = 4, alpha: float = 2.0, seed: int = 0,
                     scale: float = 0.1) -> dict[str, Any]:  # fmt: skip
    """A kohya/musubi-tuner Z-Image LoRA (``lora_unet_<original layer>``) on every 2-D weight
    of an official-layout transformer (fused ``attention.qkv``, ``attention.out``, the
    feed-forward, modulations, embedders and the last layer)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    layers = {k.removesuffix(".weight"): v for k, v in shapes.items()
              if k.endswith(".weight") and len(v) == 2 and not k.startswith("cap_embedder.0")}  # fmt: skip
    for name, (out, inner) in sorted(layers.items()):
        key = "lora_unet_" + name.replace(".", "_")
        state[f"{key}.lora_down.weight"] = torch.randn(rank, inner, generator=generator) * scale
        state[f"{key}.lora_up.weight"] = torch.randn(out, rank, generator=generator) * scale
        state[f"{key}.alpha"] = torch.tensor(float(alpha))
    return state


def write_kohya_lora(transformer: Path, path: Path, *, rank: int = 4, alpha: float = 2.0, seed: int = 0) -> Path:
    """A kohya/musubi Z-Image LoRA fitting the official-layout ``transformer`` file (its shapes
    read from the header), with musubi-tuner's metadata, bf16 as it saves."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from engine.arch.zimage.convert import strip_prefix

    with safe_open(str(transformer), framework="pt") as handle:
        shapes = strip_prefix({k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()})
    state = kohya_lora_state(shapes, rank=rank, alpha=alpha, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"ss_network_module": "networks.lora_zimage", "ss_base_model_version": "zimage",
                "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
                "modelspec.architecture": "z-image-turbo/lora"}  # fmt: skip
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, str(path), metadata)
    return path
