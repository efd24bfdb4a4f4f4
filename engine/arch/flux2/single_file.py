"""FLUX.2's VAE as BFL publishes it (``flux2-vae.safetensors``, also ``ae.safetensors`` in
``black-forest-labs/FLUX.2-dev``), loaded into diffusers' ``AutoencoderKLFlux2``.

Why this converter is ours: diffusers converts this file only in a script
(``scripts/convert_flux2_to_diffusers.py``, which writes a folder), not in its single-file
loader. The file is FLUX.1's LDM layout (``encoder.down.N.block.M``, ``mid.attn_1``, 1x1-conv
attention) with three differences, which the table below undoes before diffusers' own
``convert_ldm_vae_checkpoint`` (the one FLUX.1's ``ae.safetensors`` goes through) converts the
rest: the quant convs live inside the encoder and decoder, and a batch norm (running statistics
only) normalises the patchified latents.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.arch.components import named as _named
from engine.arch.components import strip_component_prefix
from engine.component_configs import CONFIG_ROOT
from engine.protocol import EngineError, ErrorCode

#: BFL's FLUX.2 names -> the LDM names diffusers' converter reads (the script's
#: ``DIFFUSERS_VAE_TO_FLUX2_MAPPING``, where these are the entries that differ from FLUX.1's).
TO_LDM = {
    "encoder.quant_conv.weight": "quant_conv.weight",
    "encoder.quant_conv.bias": "quant_conv.bias",
    "decoder.post_quant_conv.weight": "post_quant_conv.weight",
    "decoder.post_quant_conv.bias": "post_quant_conv.bias",
}
#: Kept as they are: the same names in ``AutoencoderKLFlux2``.
BATCH_NORM = ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked")


def vae_config(state: dict[str, Any]) -> dict[str, Any]:
    """The shipped config with the sizes these tensors show (levels, widths, depth, latents)."""
    config = json.loads((CONFIG_ROOT / "flux2_klein" / "vae" / "config.json").read_text(encoding="utf-8"))
    config.pop("_class_name", None)
    levels = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.down."))
    latents = int(state["decoder.conv_in.weight"].shape[1])
    patch = round((int(state["bn.running_mean"].shape[0]) // latents) ** 0.5)
    config.update(block_out_channels=[int(state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in range(levels)],
                  layers_per_block=1 + max(int(k.split(".")[4]) for k in state if k.startswith("encoder.down.0.block.")),
                  latent_channels=latents, patch_size=[patch, patch],
                  down_block_types=[config["down_block_types"][0]] * levels,
                  up_block_types=[config["up_block_types"][0]] * levels)  # fmt: skip
    return config


def to_diffusers(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    import torch
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    ldm = {TO_LDM.get(k, k): v for k, v in state.items() if k not in BATCH_NORM}
    converted = convert_ldm_vae_checkpoint(ldm, config)
    converted.update({k: state[k] for k in BATCH_NORM if k in state})
    converted.setdefault("bn.num_batches_tracked", torch.tensor(0, dtype=torch.long))  # BFL keeps only the statistics
    return converted


def vae_from_bfl(state: dict[str, Any], *, dtype: Any) -> Any:
    """``AutoencoderKLFlux2`` from ``flux2-vae.safetensors``' tensors."""
    import torch
    from diffusers import AutoencoderKLFlux2

    from engine.arch.flux.loading import _empty, _fill

    state = strip_component_prefix(state)
    if "bn.running_mean" not in state or "encoder.down.0.block.0.conv1.weight" not in state:
        raise EngineError(ErrorCode.ARCH_MISMATCH, "this is not FLUX.2's VAE in BFL's layout (no encoder.down / "
                          "bn.running_mean tensors): use flux2-vae.safetensors")  # fmt: skip
    config = vae_config(state)
    if config["latent_channels"] != 32:
        raise EngineError(ErrorCode.ARCH_MISMATCH, f"this VAE has {config['latent_channels']} latent channels; "
                          "FLUX.2 needs its 32-channel VAE (flux2-vae.safetensors)")  # fmt: skip
    converted = to_diffusers(state, config)
    model = _empty(lambda: AutoencoderKLFlux2.from_config(config))
    counter = converted.pop("bn.num_batches_tracked")
    model = _fill(model, {**converted, "bn.num_batches_tracked": counter.to(dtype)}, dtype, "FLUX.2 VAE",
                  "FLUX.2 reads BFL's flux2-vae.safetensors as published")  # fmt: skip
    model.bn.num_batches_tracked = counter.to(torch.long)  # a counter, never cast
    return model.eval()


def identity(path: Path) -> Path:
    """The file whose size and time name a component for the shared-component cache."""
    return path / "config.json" if path.is_dir() else path


def load_vae(path: Path, *, dtype: Any) -> Any:
    """The repository's ``vae/`` folder, or BFL's ``flux2-vae.safetensors``."""
    from engine.arch.flux2.loading import read, vae_from_folder

    if path.is_dir():
        return vae_from_folder(path, dtype=dtype)
    return _named(path, lambda: vae_from_bfl(read(path), dtype=dtype))

