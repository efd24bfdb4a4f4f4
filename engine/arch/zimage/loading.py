"""Loading Z-Image from the files people have: a diffusers folder, or the official single-file
transformer with its separate VAE (FLUX.1's ``ae.safetensors``), Qwen3 text encoder
(ComfyUI's ``qwen_3_4b.safetensors``) and tokenizer folder.

Every single-file path reads the configs from the tensors, as ComfyUI does (width, head size,
depth, refiner depth, text width, input channels), so cut or pruned transformers load without a
config of their own; real sizes use the configs shipped in ``data/configs/zimage``. Nothing is
downloaded, and only ``.safetensors`` are opened.

fp8: a plain e4m3fn file stays fp8 in memory and computes in bf16 one layer at a time (FLUX's
:func:`engine.arch.flux.loading.keep_fp8`). A *scaled* fp8 file (ComfyUI's ``scaled_fp8`` marker
and a per-layer ``scale_weight``: W = fp8 · scale) is dequantised while loading, since the weight
patcher adds a LoRA's ΔW to the weight itself and a scaled weight would need the ΔW divided by
the scale on every patch; its memory plan may then store it fp8 again (unscaled).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.arch.flux.loading import _DTYPE_NAMES, _empty, _fill, _safetensors, keep_fp8
from engine.arch.zimage.convert import strip_prefix, to_diffusers, transformer_config
from engine.component_configs import CONFIG_ROOT
from engine.protocol import EngineError, ErrorCode

#: Per-layer scales of ComfyUI's scaled fp8 files, and the keys that only mark them.
_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
_MARKERS = ("scaled_fp8",)
_IGNORED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")


@dataclass(frozen=True)
class TransformerInfo:
    """What a transformer file is, read from its header alone."""

    config: dict[str, Any]
    #: "bfloat16", "float16", "float32", "float8_e4m3fn" or "float8_e4m3fn_scaled".
    storage: str
    width: int


def shipped(component: str, name: str = "config.json") -> dict[str, Any]:
    return json.loads((CONFIG_ROOT / "zimage" / component / name).read_text(encoding="utf-8"))


def read(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(_safetensors(path)), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    with safe_open(str(_safetensors(path)), framework="pt") as handle:
        for key in handle.keys():
            sliced = handle.get_slice(key)
            shapes[key] = tuple(sliced.get_shape())
            dtypes[key] = str(sliced.get_dtype())
    return shapes, dtypes


def _meta_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """diffusers-named shapes of an original- or diffusers-named header (qkv split in three)."""
    import torch

    metas = {k: torch.empty(v, device="meta") for k, v in shapes.items()
             if not k.endswith(_SCALE_SUFFIXES + _IGNORED_SUFFIXES) and k not in _MARKERS}  # fmt: skip
    return {k: tuple(v.shape) for k, v in to_diffusers(metas).items()}


def transformer_info(shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str]) -> TransformerInfo:
    """Config and storage of a Z-Image transformer from its header."""
    named = _meta_shapes(shapes)
    if "all_x_embedder.2-1.weight" not in named or "layers.0.attention.norm_q.weight" not in named:
        raise EngineError(ErrorCode.UNSUPPORTED_FORMAT, "this file has no Z-Image transformer (no x_embedder / "
                          "layers.0.attention tensors in the official or diffusers layout)")  # fmt: skip
    counts: dict[str, int] = {}
    for key, dtype in dtypes.items():
        if key.endswith(".weight") and len(shapes[key]) >= 2:
            counts[dtype] = counts.get(dtype, 0) + 1
    storage = _DTYPE_NAMES.get(max(counts, key=counts.__getitem__), "unknown") if counts else "unknown"
    if storage.startswith("float8") and any(k.endswith(_SCALE_SUFFIXES) or k.rsplit(".", 1)[-1] in _MARKERS
                                            for k in shapes):  # fmt: skip
        storage += "_scaled"
    config = transformer_config(named, shipped("transformer"))
    return TransformerInfo(config=config, storage=storage, width=int(config["dim"]))


def inspect_transformer(path: Path) -> TransformerInfo:
    shapes, dtypes = header(path)
    return transformer_info(strip_prefix(shapes), strip_prefix(dtypes))


def dequantise(state: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """ComfyUI's scaled fp8 -> ``dtype``: each ``<layer>.weight`` times its ``scale_weight``;
    the marker and activation scales (used by fp8 matmul kernels only) are dropped."""
    import torch

    out: dict[str, Any] = {}
    for key, tensor in state.items():
        if key.endswith(_SCALE_SUFFIXES + _IGNORED_SUFFIXES) or key in _MARKERS:
            continue
        base = key.removesuffix(".weight")
        scale = next((state[base + s] for s in _SCALE_SUFFIXES if key.endswith(".weight") and base + s in state), None)
        if scale is not None:
            tensor = (tensor.to(torch.float32) * scale.to(torch.float32)).to(dtype)
        out[key] = tensor
    return out


def transformer_from_state(state: dict[str, Any], *, dtype: Any) -> Any:
    """A ``ZImageTransformer2DModel`` from official- or diffusers-named tensors; plain fp8
    weights stay fp8 (bf16 compute), scaled fp8 is dequantised to ``dtype``."""
    import torch
    from diffusers import ZImageTransformer2DModel

    state = strip_prefix(state)
    info = transformer_info({k: tuple(v.shape) for k, v in state.items()},
                            {k: _torch_dtype_name(v.dtype) for k, v in state.items()})  # fmt: skip
    if info.storage.endswith("_scaled"):
        state = dequantise(state, dtype)
    fp8 = info.storage.startswith("float8") and not info.storage.endswith("_scaled")
    converted = to_diffusers(state)
    model = _empty(lambda: ZImageTransformer2DModel.from_config(info.config))
    compute = torch.bfloat16 if fp8 else dtype
    _fill(model, converted, compute, "Z-Image transformer")
    if fp8:
        storage = getattr(torch, info.storage)
        keep_fp8(model, {k for k, v in converted.items() if v.dtype == storage}, storage)
    return model


def _torch_dtype_name(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.")
    return {v: k for k, v in _DTYPE_NAMES.items()}.get(name, name)


def text_encoder_from_state(state: dict[str, Any], *, dtype: Any) -> Any:
    """Qwen3 (``qwen_3_4b.safetensors``: transformers names with or without the causal LM's
    ``model.`` prefix; its ``lm_head`` is not needed); sizes from the shapes."""
    from transformers import Qwen3Config, Qwen3Model

    state = {k.removeprefix("model."): v for k, v in state.items() if not k.startswith("lm_head.")}
    if "embed_tokens.weight" not in state or "layers.0.self_attn.q_proj.weight" not in state:
        raise EngineError(ErrorCode.ARCH_MISMATCH, "this text encoder is not a Qwen3 model (no embed_tokens / "
                          "layers.0.self_attn tensors); Z-Image reads Qwen3-4B (qwen_3_4b.safetensors)")  # fmt: skip
    config = shipped("text_encoder")
    vocab, width = (int(n) for n in state["embed_tokens.weight"].shape)
    head_dim = int(state["layers.0.self_attn.q_norm.weight"].shape[0])
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers."))
    config.update(vocab_size=vocab, hidden_size=width, head_dim=head_dim, num_hidden_layers=layers,
                  max_window_layers=layers,
                  num_attention_heads=int(state["layers.0.self_attn.q_proj.weight"].shape[0]) // head_dim,
                  num_key_value_heads=int(state["layers.0.self_attn.k_proj.weight"].shape[0]) // head_dim,
                  intermediate_size=int(state["layers.0.mlp.gate_proj.weight"].shape[0]))  # fmt: skip
    for special in ("bos_token_id", "eos_token_id"):  # a cut vocabulary has not Qwen's ids
        if config.get(special) is not None and config[special] >= vocab:
            config[special] = None
    model = _empty(lambda: Qwen3Model(Qwen3Config(**config)))
    return _fill(model, state, dtype, "Qwen3 text encoder")


def vae_from_state(state: dict[str, Any], *, dtype: Any) -> Any:
    """FLUX.1's VAE (``ae.safetensors``), which Z-Image uses as it is."""
    from engine.arch.flux.loading import vae_from_ldm

    return vae_from_ldm(state, dtype=dtype)


def load_tokenizer(folder: Path) -> Any:
    """The Qwen tokenizer folder (``tokenizer.json`` with its chat template), offline."""
    from transformers import AutoTokenizer

    if not (folder / "tokenizer.json").is_file():
        raise EngineError(ErrorCode.UNKNOWN_FILE, f"'{folder}' has no tokenizer.json: copy the tokenizer/ folder "
                          "of Tongyi-MAI/Z-Image-Turbo (Qwen3's tokenizer) there")  # fmt: skip
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def scheduler() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(shipped("scheduler", "scheduler_config.json"))


def pipeline(transformer: Any, vae: Any, text_encoder: Any, tokenizer: Any) -> Any:
    from diffusers import ZImagePipeline

    return ZImagePipeline(scheduler=scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                          transformer=transformer)  # fmt: skip


def load_folder(folder: Path, *, dtype: Any) -> Any:
    """A diffusers folder (``model_index.json`` + components, its own tokenizer)."""
    from diffusers import ZImagePipeline

    return ZImagePipeline.from_pretrained(str(folder), dtype=dtype, local_files_only=True, use_safetensors=True)
