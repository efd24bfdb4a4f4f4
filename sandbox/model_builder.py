"""Build demo models and LoRAs offline: real SD 1.5 / SDXL architectures, seeded random weights.

Nothing can be downloaded here, yet the demo, the tests and the GPU benchmarks all need real
files that go through the exact code paths a user's files take. So this module instantiates the
real diffusers/transformers classes, fills them with deterministic random weights and saves them
the way they appear in the wild: SD 1.5 as one single-file checkpoint in the original (ldm/A1111)
key layout, SDXL as a diffusers folder, LoRAs in diffusers/PEFT and kohya key formats.

``size="tiny"`` keeps every tensor small (seconds to build, a 512x512 image in about a second
on a CPU); ``size="full"`` uses the shipped real configs for speed measurements on a GPU.

    python -m sandbox build-models --out demo-assets [--size full] [--arch sd15 --arch sdxl]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine.component_configs import (  # config_sidecar is also used from here by tests
    config_sidecar,
    shipped_configs,
    write_config_folder,
)
from engine.loras.keys import unet_module_to_ldm

#: Bump when the files the builder writes change, so old builds are rebuilt.
BUILD_VERSION = 7
STAMP_FILE = "atelier-build.json"
Size = Literal["tiny", "full"]

#: SAI model-spec architecture names (what kohya's sd-scripts writes), per architecture.
MODELSPEC = {
    "sd15": "stable-diffusion-v1",
    "sdxl": "stable-diffusion-xl-v1-base",
}
BASE_MODEL_VERSION = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}


@dataclass(frozen=True)
class DemoLora:
    """One LoRA of the demo manifest (what the bot's registry seeds itself with)."""

    name: str
    file: str
    architecture: str
    trigger_words: tuple[str, ...]
    has_text_encoder: bool
    key_format: str
    description: str
    #: The registry category a curator would pick (style, character, ...).
    category: str = "other"
    #: "demo" LoRAs are for people; "test" ones exist to exercise refusals and equivalences.
    purpose: str = "demo"


@dataclass(frozen=True)
class DemoAssets:
    model_root: Path
    lora_root: Path
    models: dict[str, str]
    loras: list[DemoLora] = field(default_factory=list)

    def lora(self, name: str) -> DemoLora:
        for lora in self.loras:
            if lora.name == name:
                return lora
        raise KeyError(f"no demo LoRA named {name!r}; have {[lo.name for lo in self.loras]}")


# ---------------------------------------------------------------------------------------------
# Configs


def _tiny_text_encoder(*, pad_token_id: int, projection: bool = False) -> dict[str, Any]:
    """Tiny CLIP text encoders; SDXL's second is wider than its first, as in the real model
    (diffusers' single-file loader tells the two apart by their widths)."""
    from engine.tokenizer import BOS_ID, EOS_ID, MAX_LENGTH, VOCAB_SIZE

    return {
        "architectures": ["CLIPTextModelWithProjection" if projection else "CLIPTextModel"],
        "hidden_size": 64 if projection else 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 5,
        "projection_dim": 32,
        "hidden_act": "gelu" if projection else "quick_gelu",
        "max_position_embeddings": MAX_LENGTH,
        "vocab_size": VOCAB_SIZE,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": pad_token_id,
        "layer_norm_eps": 1e-5,
        "model_type": "clip_text_model",
    }


#: Four VAE blocks, like the real one, so latents are 1/8 of the image and sizes are real.
_TINY_VAE = {
    "block_out_channels": [8, 16, 32, 32],
    "layers_per_block": 1,
    "norm_num_groups": 8,
}
_TINY_UNET_COMMON = {
    "block_out_channels": [32, 64],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
}


def component_configs(arch: str, size: Size) -> dict[str, dict[str, Any]]:
    """The config of every component (the real one, or its tiny variant)."""
    configs = shipped_configs(arch)
    if size == "full":
        return configs
    configs["vae"].update(_TINY_VAE)
    unet = configs["unet"]
    unet.update(_TINY_UNET_COMMON)
    if arch == "sd15":
        unet.update(cross_attention_dim=32, attention_head_dim=8)
        configs["text_encoder"] = _tiny_text_encoder(pad_token_id=49407)
    else:
        unet.update(
            cross_attention_dim=32 + 64,  # both encoders' hidden states, concatenated
            attention_head_dim=[2, 4],
            transformer_layers_per_block=[1, 2],
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
        )
        configs["text_encoder"] = _tiny_text_encoder(pad_token_id=49407)
        configs["text_encoder_2"] = _tiny_text_encoder(pad_token_id=0, projection=True)
    return configs


# ---------------------------------------------------------------------------------------------
# Models


def _seeded(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def build_components(arch: str, size: Size, seed: int) -> dict[str, Any]:
    """Instantiate every torch component of the pipeline with seeded random weights."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = component_configs(arch, size)
    components: dict[str, Any] = {}
    _seeded(seed * 100 + 1)
    components["unet"] = UNet2DConditionModel.from_config(configs["unet"])
    _seeded(seed * 100 + 2)
    components["vae"] = AutoencoderKL.from_config(configs["vae"])
    _seeded(seed * 100 + 3)
    components["text_encoder"] = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    if arch == "sdxl":
        _seeded(seed * 100 + 4)
        config = CLIPTextConfig(**configs["text_encoder_2"])
        components["text_encoder_2"] = CLIPTextModelWithProjection(config)
    if size == "tiny":
        _liven_up(components, seed)
    else:
        # Half precision halves the files; GPU benchmarks run in fp16 anyway.
        for module in components.values():
            for param in module.parameters():
                param.data = param.data.to(torch.float16)
    for module in components.values():
        module.eval()
    return components


def _liven_up(components: dict[str, Any], seed: int) -> None:
    """Make the tiny models' outputs depend visibly on the prompt and the latents.

    Freshly initialised networks are nearly silent (zero-ish output convs, tiny attention
    projections), so a LoRA would change a few pixel values at best. Widening a few weights
    keeps the maths honest while giving images with structure and colour.
    """
    import torch

    generator = torch.Generator().manual_seed(seed * 100 + 9)
    with torch.no_grad():
        for name, param in components["unet"].named_parameters():
            if name.startswith("conv_out") and name.endswith("weight"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
        vae = components["vae"]
        for name, param in vae.decoder.named_parameters():
            if name.startswith("conv_out") and name.endswith("weight"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def _vae_to_ldm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """diffusers AutoencoderKL keys -> the original ``first_stage_model`` layout."""
    blocks = len(config["block_out_channels"])
    out: dict[str, Any] = {}
    attn_names = {
        "group_norm": "norm",
        "to_q": "q",
        "to_k": "k",
        "to_v": "v",
        "to_out.0": "proj_out",
    }
    for key, tensor in state.items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        for side in ("encoder", "decoder"):
            new = new.replace(f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1.")
            new = new.replace(f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2.")
            if new.startswith(f"{side}.mid_block.attentions.0."):
                rest = new.removeprefix(f"{side}.mid_block.attentions.0.")
                module, _, param = rest.rpartition(".")
                new = f"{side}.mid.attn_1.{attn_names[module]}.{param}"
                if tensor.ndim == 2:
                    tensor = tensor[:, :, None, None]
        for i in range(blocks):
            new = new.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            new = new.replace(
                f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."
            )
            ldm = blocks - 1 - i
            new = new.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{ldm}.block.")
            new = new.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{ldm}.upsample.")
        out["first_stage_model." + new] = tensor
    return out


def _unet_to_ldm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        out[f"model.diffusion_model.{unet_module_to_ldm(module, config)}.{param}"] = tensor
    return out


def _open_clip_to_ldm(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """transformers CLIPTextModelWithProjection keys -> OpenCLIP's (SDXL's second encoder)."""
    import torch

    out: dict[str, Any] = {}
    qkv: dict[tuple[str, str], dict[str, Any]] = {}
    renames = (
        ("self_attn.out_proj", "attn.out_proj"),
        ("layer_norm1", "ln_1"),
        ("layer_norm2", "ln_2"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
    )
    for key, tensor in state.items():
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = tensor.T.contiguous()
            continue
        name = key.removeprefix("text_model.")
        if name == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = tensor
        elif name == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = tensor
        elif name.startswith("final_layer_norm."):
            out[prefix + "ln_final." + name.rsplit(".", 1)[1]] = tensor
        elif name.startswith("encoder.layers."):
            _, _, index, rest = name.split(".", 3)
            module, _, param = rest.rpartition(".")
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((index, param), {})[module.rsplit(".", 1)[1]] = tensor
                continue
            for old, new in renames:
                rest = rest.replace(old, new)
            out[f"{prefix}transformer.resblocks.{index}.{rest}"] = tensor
    for (index, param), parts in qkv.items():
        joined = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
        out[f"{prefix}transformer.resblocks.{index}.attn.in_proj_{param}"] = joined
    return out


def _clip_to_ldm(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """transformers CLIPTextModel keys (flat since transformers 5.6) -> ``<prefix>text_model.…``."""
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def save_single_file(components: dict[str, Any], path: Path, arch: str) -> None:
    """Save a checkpoint the way A1111/civitai files are laid out (one ldm/sgm-keyed file)."""
    state: dict[str, Any] = {}
    state.update(_unet_to_ldm(components["unet"].state_dict(), dict(components["unet"].config)))
    state.update(_vae_to_ldm(components["vae"].state_dict(), dict(components["vae"].config)))
    if arch == "sd15":
        state.update(_clip_to_ldm(components["text_encoder"].state_dict(), "cond_stage_model.transformer."))
    elif arch == "sdxl":
        state.update(_clip_to_ldm(components["text_encoder"].state_dict(), "conditioner.embedders.0.transformer."))
        state.update(_open_clip_to_ldm(components["text_encoder_2"].state_dict(), "conditioner.embedders.1.model."))
    else:
        raise ValueError(f"no single-file layout for {arch!r}")
    state = {k: v.contiguous() for k, v in state.items()}
    metadata = {"modelspec.architecture": MODELSPEC[arch], "modelspec.title": path.stem}
    _save(state, path, metadata)


def save_diffusers_folder(components: dict[str, Any], folder: Path, arch: str, size: Size) -> None:
    write_config_folder(folder, arch, component_configs(arch, size))
    for name, module in components.items():
        module.save_pretrained(str(folder / name), safe_serialization=True)


# ---------------------------------------------------------------------------------------------
# LoRAs


@dataclass
class LoraLayer:
    """One LoRA pair for one linear layer, named as diffusers names the layer."""

    component: str  # "unet", "text_encoder", "text_encoder_2"
    module: str  # module path inside that component (text encoders: without "text_model.")
    down: Any  # A, shape (rank, in_features)
    up: Any  # B, shape (out_features, rank)
    alpha: float


_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _linear_modules(module: Any, suffixes: Sequence[str]) -> Iterator[tuple[str, Any]]:
    import torch

    for name, child in module.named_modules():
        if isinstance(child, torch.nn.Linear) and name.endswith(tuple("." + s for s in suffixes)):
            yield name, child


def make_lora_layers(
    components: dict[str, Any],
    *,
    seed: int,
    rank: int = 4,
    alpha: float = 4.0,
    text_encoder: bool = False,
    strength: float = 1.0,
) -> list[LoraLayer]:
    """Random LoRA pairs for every attention projection, big enough to change the image."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    targets = [("unet", _UNET_TARGETS)]
    if text_encoder:
        targets += [(c, _TE_TARGETS) for c in ("text_encoder", "text_encoder_2") if c in components]
    layers = []
    for component, suffixes in targets:
        for name, linear in _linear_modules(components[component], suffixes):
            name = name.removeprefix("text_model.")
            down = torch.randn((rank, linear.in_features), generator=generator)
            down /= linear.in_features**0.5
            up = torch.randn((linear.out_features, rank), generator=generator)
            up *= strength * (rank / alpha) / rank**0.5
            layers.append(LoraLayer(component, name, down, up, alpha))
    return layers


def _te_key(module: str) -> str:
    return "text_model." + module


def diffusers_state_dict(layers: list[LoraLayer]) -> dict[str, Any]:
    """PEFT-style keys as diffusers' ``save_lora_weights`` writes them (alpha folded into B).

    The diffusers format has no per-layer alpha: scaling is 1 unless adapter metadata says
    otherwise, so B is pre-multiplied by alpha/rank, exactly representing the same LoRA.
    """
    state = {}
    for layer in layers:
        rank = layer.down.shape[0]
        module = layer.module if layer.component == "unet" else _te_key(layer.module)
        prefix = f"{layer.component}.{module}"
        state[f"{prefix}.lora_A.weight"] = layer.down.contiguous()
        state[f"{prefix}.lora_B.weight"] = (layer.up * (layer.alpha / rank)).contiguous()
    return state


def kohya_state_dict(
    layers: list[LoraLayer], arch: str, unet_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """kohya sd-scripts keys: ``lora_unet_…``/``lora_te…`` with ``lora_down``/``lora_up``/``alpha``.

    SD 1.5 kohya files name UNet layers the diffusers way; SDXL ones use the original (sgm)
    ``input_blocks``/``output_blocks`` names, so SDXL files here do too.
    """
    import torch

    te_prefix = {"text_encoder": "lora_te1_" if arch == "sdxl" else "lora_te_", "text_encoder_2": "lora_te2_"}
    state = {}
    for layer in layers:
        if layer.component == "unet":
            module = layer.module
            if arch == "sdxl" and unet_config is not None:
                module = unet_module_to_ldm(module, unet_config)
            name = "lora_unet_" + module.replace(".", "_")
        else:
            name = te_prefix[layer.component] + _te_key(layer.module).replace(".", "_")
        state[f"{name}.lora_down.weight"] = layer.down.contiguous()
        state[f"{name}.lora_up.weight"] = layer.up.contiguous()
        state[f"{name}.alpha"] = torch.tensor(float(layer.alpha))
    return state


def kohya_metadata(arch: str, output_name: str, tags: dict[str, int], rank: int, alpha: float) -> dict[str, str]:
    """Training metadata the way sd-scripts writes it (every value a string)."""
    return {
        "ss_base_model_version": BASE_MODEL_VERSION[arch],
        "ss_output_name": output_name,
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_tag_frequency": json.dumps({f"10_{output_name}": tags}),
        "ss_training_comment": "atelier demo LoRA: random weights, not trained",
        "modelspec.architecture": f"{MODELSPEC[arch]}/lora",
        "modelspec.title": output_name,
    }


def _save(state: dict[str, Any], path: Path, metadata: dict[str, str]) -> None:
    """Write safetensors with a canonical header, so the same build gives the same bytes.

    safetensors keeps metadata in a hash map whose order changes from process to process;
    sorting the header makes files (and so their hashes, which users see) reproducible.
    """
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    raw = save(state, metadata=metadata or None)
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    ordered: dict[str, Any] = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    ordered.update(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + length :])


def flux_lora_state_dict(seed: int) -> dict[str, Any]:
    """A few FLUX transformer LoRA keys: a file no SD model has layers for."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for block in range(2):
        for proj in ("to_q", "to_k", "to_v"):
            prefix = f"transformer.single_transformer_blocks.{block}.attn.{proj}"
            state[f"{prefix}.lora_A.weight"] = torch.randn((4, 3072), generator=generator)
            state[f"{prefix}.lora_B.weight"] = torch.randn((3072, 4), generator=generator)
    return state


def no_match_state_dict(seed: int) -> dict[str, Any]:
    """UNet-style LoRA keys naming modules that no SD UNet has (a renamed or foreign network)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for block in range(2):
        prefix = f"unet.extra_blocks.{block}.attn.to_q"
        state[f"{prefix}.lora_A.weight"] = torch.randn((4, 32), generator=generator)
        state[f"{prefix}.lora_B.weight"] = torch.randn((32, 4), generator=generator)
    return state


def build_loras(arch: str, components: dict[str, Any], lora_root: Path, seed: int) -> list[DemoLora]:
    """The demo set for one architecture, plus the test-only twins."""
    folder = lora_root / arch
    folder.mkdir(parents=True, exist_ok=True)
    xl = "-xl" if arch == "sdxl" else ""
    spec = {"modelspec.architecture": f"{MODELSPEC[arch]}/lora"}
    unet_config = dict(components["unet"].config)
    loras: list[DemoLora] = []

    def add(name: str, file: str, **kwargs: Any) -> None:
        loras.append(DemoLora(name=name, file=f"{arch}/{file}", architecture=arch, **kwargs))

    base = seed * 1000 + (0 if arch == "sd15" else 500)

    # 1. watercolor: diffusers/PEFT format, UNet and text encoder(s).
    layers = make_lora_layers(components, seed=base + 1, rank=4, alpha=4, text_encoder=True)
    _save(diffusers_state_dict(layers), folder / f"watercolor{xl}.safetensors", dict(spec, **{"modelspec.title": "watercolor"}))
    add(f"watercolor{xl}", f"watercolor{xl}.safetensors", trigger_words=("watercolor",), has_text_encoder=True,
        key_format="diffusers", category="style",
        description="Soft washes of colour that bleed at the edges, like paint on wet paper.")

    # 2. pixel-art: kohya format with training metadata, UNet only.
    layers = make_lora_layers(components, seed=base + 2, rank=8, alpha=4, text_encoder=False)
    tags = {"pixel art": 40, "8-bit": 25, "sprite": 12}
    metadata = kohya_metadata(arch, f"pixel-art{xl}", tags, rank=8, alpha=4)
    _save(kohya_state_dict(layers, arch, unet_config), folder / f"pixel-art{xl}.safetensors", metadata)
    add(f"pixel-art{xl}", f"pixel-art{xl}.safetensors", trigger_words=("pixel art", "8-bit"), has_text_encoder=False,
        key_format="kohya", category="style", description="Chunky pixels and a tiny palette, like a 90s console sprite.")

    # 3. a character: kohya format, UNet and text encoder(s), training metadata.
    layers = make_lora_layers(components, seed=base + 3, rank=4, alpha=2, text_encoder=True)
    tags = {"captain nova": 30, "red scarf": 18, "space helmet": 9}
    metadata = kohya_metadata(arch, f"captain-nova{xl}", tags, rank=4, alpha=2)
    _save(kohya_state_dict(layers, arch, unet_config), folder / f"captain-nova{xl}.safetensors", metadata)
    add(f"captain-nova{xl}", f"captain-nova{xl}.safetensors", trigger_words=("captain nova",), has_text_encoder=True,
        key_format="kohya", category="character",
        description="Captain Nova, a cheerful space explorer with a red scarf.")

    # 4. test twins: the same LoRA in both key formats (alpha != rank to exercise scaling).
    layers = make_lora_layers(components, seed=base + 4, rank=4, alpha=2, text_encoder=True)
    _save(kohya_state_dict(layers, arch, unet_config), folder / "twin-kohya.safetensors", {})
    _save(diffusers_state_dict(layers), folder / "twin-diffusers.safetensors", {})
    for fmt in ("kohya", "diffusers"):
        add(f"twin-{fmt}{xl}", f"twin-{fmt}.safetensors", trigger_words=(), has_text_encoder=True, key_format=fmt,
            description=f"Test twin in {fmt} key format (same weights as its twin).", purpose="test")

    # 5. test: keys that match nothing in an SD model.
    _save(flux_lora_state_dict(base + 5), folder / "flux-only.safetensors", {"modelspec.architecture": "flux-1-dev/lora"})
    add(f"flux-only{xl}", "flux-only.safetensors", trigger_words=(), has_text_encoder=False, key_format="diffusers",
        description="Test: a FLUX LoRA, whose keys match no SD layer.", purpose="test")

    # 6. test (SD 1.5): looks like an SD UNet LoRA, but names layers the model does not have.
    if arch == "sd15":
        _save(no_match_state_dict(base + 6), folder / "no-match.safetensors", dict(spec))
        add("no-match", "no-match.safetensors", trigger_words=(), has_text_encoder=False, key_format="diffusers",
            description="Test: UNet LoRA keys naming layers that do not exist.", purpose="test")
    return loras


# ---------------------------------------------------------------------------------------------
# The build


def _options(size: Size, architectures: Sequence[str], seed: int, with_loras: bool, trained: bool) -> dict[str, Any]:
    options: dict[str, Any] = {
        "version": BUILD_VERSION,
        "size": size,
        "architectures": sorted(architectures),
        "seed": seed,
        "with_loras": with_loras,
    }
    if trained:
        from sandbox.train_demo.shipped import WEIGHTS

        # The shipped files and their sizes: new weights from git rebuild the assets.
        options["trained"] = sorted([p.name, p.stat().st_size] for p in WEIGHTS.iterdir())
    return options


def install_trained(model_root: Path, lora_root: Path) -> tuple[str, list[DemoLora]]:
    """The trained SD 1.5 demo model and its LoRAs (sandbox/demo_weights), in place of random ones."""
    from sandbox.train_demo.shipped import TRAINED_LORAS, install

    checkpoint, files = install(model_root, lora_root)
    loras = [
        DemoLora(name=lora.name, file=file, architecture="sd15", trigger_words=lora.trigger_words,
                 has_text_encoder=lora.category == "character", key_format="kohya",
                 description=lora.description, category=lora.category)
        for lora, file in zip(TRAINED_LORAS, files, strict=True)
    ]  # fmt: skip
    return checkpoint, loras


def model_file_name(arch: str, size: Size) -> str:
    return f"{arch}-{size}.safetensors" if arch == "sd15" else f"{arch}-{size}"


def _assets_from_stamp(out_dir: Path, stamp: dict[str, Any]) -> DemoAssets:
    return DemoAssets(
        model_root=out_dir / "models",
        lora_root=out_dir / "loras",
        models=dict(stamp["models"]),
        loras=[DemoLora(**{**lo, "trigger_words": tuple(lo["trigger_words"])}) for lo in stamp["loras"]],
    )


def build_demo_assets(
    out_dir: Path,
    *,
    size: Size = "tiny",
    architectures: Sequence[str] = ("sd15", "sdxl"),
    seed: int = 0,
    with_loras: bool = True,
    trained: bool = False,
) -> DemoAssets:
    """Build (or reuse) models under ``out_dir/models`` and LoRAs under ``out_dir/loras``.

    Idempotent: a complete build with the same options is returned without touching it; an
    incomplete or different one is rebuilt from scratch. The stamp is written last, so a
    build interrupted half-way is never mistaken for a complete one. ``trained``: SD 1.5 is the
    trained demo model with its LoRAs (:mod:`sandbox.train_demo.shipped`), not random weights.
    """
    out_dir = Path(out_dir)
    unknown = set(architectures) - set(MODELSPEC)
    if unknown:
        raise ValueError(f"cannot build {sorted(unknown)}: the builder makes {sorted(MODELSPEC)}")
    options = _options(size, architectures, seed, with_loras, trained)
    stamp_path = out_dir / STAMP_FILE
    if stamp_path.is_file():
        try:
            stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
            if stamp.get("options") == options:
                return _assets_from_stamp(out_dir, stamp)
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            pass
        stamp_path.unlink()
    model_root, lora_root = out_dir / "models", out_dir / "loras"
    for folder in (model_root, lora_root):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)

    import torch

    models: dict[str, str] = {}
    loras: list[DemoLora] = []
    with torch.no_grad():
        for index, arch in enumerate(sorted(architectures)):
            if trained and arch == "sd15":
                models[arch], trained_loras = install_trained(model_root, lora_root)
                loras += trained_loras if with_loras else []
                continue
            components = build_components(arch, size, seed + index)
            name = model_file_name(arch, size)
            if arch == "sd15":
                path = model_root / name
                save_single_file(components, path, arch)
                write_config_folder(config_sidecar(path), arch, component_configs(arch, size))
            else:
                save_diffusers_folder(components, model_root / name, arch, size)
            models[arch] = name
            if with_loras:
                loras += build_loras(arch, components, lora_root, seed)
            del components
    stamp = {"options": options, "models": models, "loras": [dataclasses.asdict(lo) for lo in loras]}
    stamp_path.write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    (out_dir / "manifest.json").write_text(
        json.dumps({"models": models, "loras": stamp["loras"]}, indent=2) + "\n", encoding="utf-8"
    )
    return _assets_from_stamp(out_dir, stamp)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox build-models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to build into")
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--arch", action="append", choices=sorted(MODELSPEC), help="repeatable (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-loras", action="store_true")
    parser.add_argument("--trained", action="store_true",
                        help="SD 1.5: the trained demo model and LoRAs of sandbox/demo_weights, not random weights")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    assets = build_demo_assets(
        args.out, size=args.size, architectures=args.arch or tuple(MODELSPEC), seed=args.seed,
        with_loras=not args.no_loras, trained=args.trained,
    )
    print(json.dumps({
        "models": {arch: str(assets.model_root / rel) for arch, rel in assets.models.items()},
        "lora_root": str(assets.lora_root),
        "loras": len(assets.loras),
        "seconds": round(time.perf_counter() - started, 2),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
