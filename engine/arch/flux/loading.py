"""Loading FLUX.1 from the files people have: a diffusers folder, BFL's single-file transformer
with its separate VAE / CLIP-L / T5 files, or an all-in-one file.

Every single-file path reads the configs from the tensors, as ComfyUI does (depth, width, head
size, input channels, guidance embedding), so pruned, distilled, Fill and Kontext transformers
load without a config of their own; real-size text encoders and VAE use the configs shipped in
``data/configs/flux1``. Nothing is downloaded, and only ``.safetensors`` are opened.

fp8 (e4m3fn) transformer weights stay fp8 in memory and are computed in bf16, one layer at a
time (:func:`keep_fp8`; the weights pass through bf16 once while loading: fp8 -> bf16 -> fp8 is
exact).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.arch.flux.convert import bfl_to_diffusers, diffusers_to_bfl, transformer_config
from engine.arch.flux.t5_tokenizer import load_t5_tokenizer, tokenizer_beside
from engine.component_configs import CONFIG_ROOT
from engine.protocol import EngineError, ErrorCode

#: Key prefixes of an all-in-one file (ComfyUI's checkpoint save for FLUX).
AIO_TRANSFORMER = "model.diffusion_model."
AIO_VAE = "vae."
AIO_CLIP = "text_encoders.clip_l.transformer."
AIO_T5 = "text_encoders.t5xxl.transformer."
#: What tells the variants apart in the transformer's tensors.
FILL_IN_CHANNELS = 384  # 64 latent + 320 masked-image/mask channels


@dataclass(frozen=True)
class TransformerInfo:
    """What a transformer file is, read from its header alone (no tensor loaded)."""

    config: dict[str, Any]
    #: "dev" (guidance embedding), "schnell" (none) or "fill" (384 input channels).
    variant: str
    #: The dtype most weights are stored in ("bfloat16", "float16", "float8_e4m3fn", ...).
    storage: str
    width: int
    mlp_hidden: int


def _shipped(component: str, name: str = "config.json") -> dict[str, Any]:
    return json.loads((CONFIG_ROOT / "flux1" / component / name).read_text(encoding="utf-8"))


def _safetensors(path: Path) -> Path:
    if path.suffix != ".safetensors":
        raise EngineError(ErrorCode.NOT_SAFETENSORS, f"'{path.name}' is not a .safetensors file; only "
                          ".safetensors weights are loaded (convert it with safetensors' convert script)")  # fmt: skip
    if not path.is_file():
        raise EngineError(ErrorCode.UNKNOWN_FILE, f"FLUX file '{path}' does not exist")
    return path


def _read(path: Path, prefix: str = "") -> dict[str, Any]:
    """The tensors under ``prefix`` (prefix removed)."""
    from safetensors import safe_open

    with safe_open(str(_safetensors(path)), framework="pt") as handle:
        return {key[len(prefix):]: handle.get_tensor(key) for key in handle.keys() if key.startswith(prefix)}  # fmt: skip


def _shapes(path: Path, prefix: str = "") -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    with safe_open(str(_safetensors(path)), framework="pt") as handle:
        for key in handle.keys():
            if key.startswith(prefix):
                sliced = handle.get_slice(key)
                shapes[key[len(prefix):]] = tuple(sliced.get_shape())
                dtypes[key[len(prefix):]] = str(sliced.get_dtype())
    return shapes, dtypes


_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F8_E4M3": "float8_e4m3fn",
                "F8_E5M2": "float8_e5m2"}  # fmt: skip


def transformer_info(shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str] | None = None) -> TransformerInfo:
    """Config and variant of a BFL-named transformer from its tensor shapes."""
    counts: dict[str, int] = {}
    for key, dtype in (dtypes or {}).items():
        if key.endswith(".weight") and len(shapes[key]) >= 2:
            counts[dtype] = counts.get(dtype, 0) + 1
    storage = _DTYPE_NAMES.get(max(counts, key=counts.__getitem__), "unknown") if counts else "unknown"
    if "x_embedder.weight" in shapes:  # diffusers' names: read the BFL shapes they stand for
        shapes = {k: tuple(v.shape) for k, v in diffusers_to_bfl(_meta(shapes)).items()}
    if "img_in.weight" not in shapes or "double_blocks.0.img_attn.qkv.weight" not in shapes:
        raise EngineError(ErrorCode.UNSUPPORTED_FORMAT, "this file has no FLUX.1 transformer in BFL's layout "
                          "(no img_in / double_blocks tensors)")  # fmt: skip
    head_dim = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    config = transformer_config(shapes, head_dim=int(head_dim))
    width = int(shapes["img_in.weight"][0])
    linear1 = shapes.get("single_blocks.0.linear1.weight")
    mlp_hidden = int(linear1[0]) - 3 * width if linear1 else int(shapes["double_blocks.0.img_mlp.0.weight"][0])
    if config["in_channels"] == FILL_IN_CHANNELS:
        variant = "fill"
    else:
        variant = "dev" if config["guidance_embeds"] else "schnell"
    return TransformerInfo(config=config, variant=variant, storage=storage, width=width, mlp_hidden=mlp_hidden)


def _meta(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    import torch

    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


def inspect_transformer(path: Path, prefix: str | None = None) -> TransformerInfo:
    """Read a single-file transformer's (or an all-in-one file's) header."""
    shapes, dtypes = _shapes(path)
    if prefix is None:
        prefix = AIO_TRANSFORMER if any(k.startswith(AIO_TRANSFORMER) for k in shapes) else ""
    return transformer_info({k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)},
                            {k[len(prefix):]: v for k, v in dtypes.items() if k.startswith(prefix)})  # fmt: skip


def _empty(factory: Any) -> Any:
    from accelerate import init_empty_weights

    with init_empty_weights():
        return factory()


def _fill(model: Any, state: dict[str, Any], dtype: Any, what: str, hint: str = "is it a FLUX.1 file?") -> Any:
    """Load ``state`` into a meta-device ``model`` (every parameter must be given), cast to ``dtype``;
    ``hint`` ends the message of a file that does not fit (what it should have been)."""
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise EngineError(ErrorCode.CORRUPT_FILE, f"the {what} weights do not fit its layout: "
                          f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                          f"(e.g. {unexpected[:3]}); {hint}")  # fmt: skip
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return model.eval()


def transformer_from_bfl(state: dict[str, Any], *, dtype: Any) -> Any:
    """A ``FluxTransformer2DModel`` from BFL-named tensors; fp8 weights stay fp8 (bf16 compute)."""
    import torch
    from diffusers import FluxTransformer2DModel

    if "x_embedder.weight" in state:  # a transformer saved with diffusers' names: same tensors
        state = diffusers_to_bfl(state)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    info = transformer_info(shapes, {k: _torch_dtype_name(v.dtype) for k, v in state.items()})
    fp8 = info.storage.startswith("float8")
    model = _empty(lambda: FluxTransformer2DModel.from_config(info.config))
    compute = torch.bfloat16 if fp8 else dtype
    converted = bfl_to_diffusers(state)
    _fill(model, converted, compute, "FLUX transformer")
    if fp8:
        storage = getattr(torch, info.storage)
        keep_fp8(model, {k for k, v in converted.items() if v.dtype == storage}, storage)
    return model


def keep_fp8(model: Any, stored_fp8: set[str], storage: Any) -> int:
    """Put the linear weights the file stores in fp8 back in fp8, computed in bf16 per call.

    Written here rather than diffusers' ``enable_layerwise_casting`` because that casts whole
    modules, biases included: fp8 files keep biases and norms in bf16, and rounding them to
    fp8 would change the model. Returns how many layers store fp8.
    """
    import torch
    import torch.nn.functional as F

    fp8 = (torch.float8_e4m3fn, torch.float8_e5m2)

    def forward(self: Any, x: Any) -> Any:
        if x.dtype in fp8:  # a model that casts its input to the weight's dtype (Z-Image's t_embedder)
            x = x.to(self.bias.dtype if self.bias is not None else torch.bfloat16)
        return F.linear(x, self.weight.to(x.dtype), self.bias)

    count = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and f"{name}.weight" in stored_fp8:
            module.weight.data = module.weight.data.to(storage)
            module.forward = forward.__get__(module)
            count += 1
    return count


def _torch_dtype_name(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.")
    return {v: k for k, v in _DTYPE_NAMES.items()}.get(name, name)


def vae_from_ldm(state: dict[str, Any], *, dtype: Any) -> Any:
    """FLUX's 16-channel ``AutoencoderKL`` from ``ae.safetensors`` names (shapes give the sizes)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = _shipped("vae")
    blocks = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.down."))
    config["block_out_channels"] = [int(state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in range(blocks)]
    config["layers_per_block"] = 1 + max(int(k.split(".")[4]) for k in state if k.startswith("encoder.down.0.block."))
    config["latent_channels"] = int(state["decoder.conv_in.weight"].shape[1])
    for kind in ("down", "up"):
        key = f"{kind}_block_types"
        config[key] = [config[key][0]] * blocks
    if config["latent_channels"] != 16:
        raise EngineError(ErrorCode.ARCH_MISMATCH, f"this VAE has {config['latent_channels']} latent channels; "
                          "FLUX.1 needs its 16-channel VAE (ae.safetensors)")  # fmt: skip
    converted = convert_ldm_vae_checkpoint(dict(state), config)
    model = _empty(lambda: AutoencoderKL.from_config(config))
    return _fill(model, converted, dtype, "VAE")


def clip_from_state(state: dict[str, Any], *, dtype: Any) -> Any:
    """CLIP-L (``clip_l.safetensors``: transformers names, with or without ``text_model.``)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    state = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}
    state.pop("text_model.embeddings.position_ids", None)
    state.pop("text_projection.weight", None)
    config = _shipped("text_encoder")
    width = int(state["text_model.embeddings.token_embedding.weight"].shape[1])
    if width != config["hidden_size"]:  # a small or pruned CLIP: CLIP's 64-wide heads
        layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers."))
        config.update(hidden_size=width, num_attention_heads=max(1, width // 64), num_hidden_layers=layers,
                      intermediate_size=int(state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
                      projection_dim=width, eos_token_id=49407, pad_token_id=49407, bos_token_id=49406)  # fmt: skip
    model = _empty(lambda: CLIPTextModel(CLIPTextConfig(**config)))
    if "text_model.embeddings.token_embedding.weight" not in model.state_dict():  # flat names (transformers 5.6+)
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    return _fill(model, state, dtype, "CLIP-L text encoder")


def t5_from_state(state: dict[str, Any], *, dtype: Any) -> Any:
    """T5-XXL's encoder (``t5xxl_*.safetensors``: transformers names); sizes from the shapes."""
    from transformers import T5Config, T5EncoderModel

    state = dict(state)
    if "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
        state["shared.weight"] = state["encoder.embed_tokens.weight"]
    config = _shipped("text_encoder_2")
    vocab, width = (int(n) for n in state["shared.weight"].shape)
    heads = int(state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape[1])
    inner = int(state["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0])
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.block."))
    config.update(vocab_size=vocab, d_model=width, num_heads=heads, d_kv=inner // heads, num_layers=layers,
                  d_ff=int(state["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]))  # fmt: skip
    model = _empty(lambda: T5EncoderModel(T5Config(**config)))
    expected = set(model.state_dict())
    if "encoder.embed_tokens.weight" in expected:
        state.setdefault("encoder.embed_tokens.weight", state["shared.weight"])
    else:
        state.pop("encoder.embed_tokens.weight", None)
    return _fill(model, state, dtype, "T5 text encoder")


def _scheduler(variant: str) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    name = "scheduler_schnell" if variant == "schnell" else "scheduler"
    return FlowMatchEulerDiscreteScheduler.from_config(_shipped(name, "scheduler_config.json"))


def _pipeline(transformer: Any, vae: Any, clip: Any, t5: Any, variant: str, t5_tokenizer: Path | None) -> Any:
    from diffusers import FluxPipeline
    from transformers import CLIPTokenizer

    from engine.tokenizer import write_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(str(write_tokenizer(Path(tmp) / "tokenizer")))
    return FluxPipeline(
        scheduler=_scheduler(variant),
        vae=vae,
        text_encoder=clip,
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=load_t5_tokenizer(t5_tokenizer, max_length=512 if variant == "dev" else 256),
        transformer=transformer,
    )


def load_from_files(transformer: Path, *, vae: Path, clip_l: Path, t5: Path, dtype: Any) -> Any:
    """BFL's layout: the transformer file and the three shared component files the operator named."""
    model = transformer_from_bfl(_read(transformer), dtype=dtype)
    variant = inspect_transformer(transformer, "").variant
    return _pipeline(model, vae_from_ldm(_read(vae), dtype=dtype), clip_from_state(_read(clip_l), dtype=dtype),
                     t5_from_state(_read(t5), dtype=dtype), variant, tokenizer_beside(t5))  # fmt: skip


def load_all_in_one(path: Path, *, dtype: Any) -> Any:
    """A ComfyUI-style single file bundling transformer, VAE and both text encoders."""
    state = _read(path)
    parts: dict[str, dict[str, Any]] = {AIO_TRANSFORMER: {}, AIO_VAE: {}, AIO_CLIP: {}, AIO_T5: {}}
    for key, tensor in state.items():
        for prefix, bucket in parts.items():
            if key.startswith(prefix):
                bucket[key[len(prefix):]] = tensor
                break
    empty = [name for name, bucket in zip(("transformer", "VAE", "CLIP-L", "T5"), parts.values(), strict=True)
             if not bucket]  # fmt: skip
    if empty:
        raise EngineError(ErrorCode.UNSUPPORTED_FORMAT, f"'{path.name}' lacks the FLUX {', '.join(empty)} "
                          "part(s) of an all-in-one file; load its transformer with separate VAE/CLIP-L/T5 files")  # fmt: skip
    model = transformer_from_bfl(parts[AIO_TRANSFORMER], dtype=dtype)
    variant = inspect_transformer(path, AIO_TRANSFORMER).variant
    return _pipeline(model, vae_from_ldm(parts[AIO_VAE], dtype=dtype), clip_from_state(parts[AIO_CLIP], dtype=dtype),
                     t5_from_state(parts[AIO_T5], dtype=dtype), variant, None)  # fmt: skip


def load_folder(folder: Path, *, dtype: Any) -> Any:
    """A diffusers folder (``model_index.json`` + components); its own tokenizers if present,
    else the shipped ones."""
    from diffusers import FluxPipeline

    kwargs: dict[str, Any] = {}
    if not (folder / "tokenizer_2").is_dir():
        kwargs["tokenizer_2"] = load_t5_tokenizer()
    return FluxPipeline.from_pretrained(str(folder), dtype=dtype, local_files_only=True,
                                        use_safetensors=True, **kwargs)  # fmt: skip
