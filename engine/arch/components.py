"""Which published component file a ``.safetensors`` is, from its header alone (torch-free).

A single-file transformer needs its VAE and text encoder from the files people download beside
it, and those files carry no config or class name: only their key layout and shapes tell a
Qwen-Image VAE (Wan 2.1's layout) from FLUX.2's (BFL's LDM layout with a batch norm) or a
Qwen2.5-VL text encoder from Z-Image's Qwen3. :mod:`engine.inspect` asks this module so the
registry can say what such a file is and where it goes, and each architecture's
``find_components`` asks it which file in its components folder is which.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.protocol import EngineError, ErrorCode

#: Prefixes some exports put before a VAE's own names (diffusers' ``LDM_VAE_KEYS``).
VAE_PREFIXES = ("first_stage_model.", "vae.")


@dataclass(frozen=True)
class Component:
    role: Literal["vae", "text_encoder"]
    architecture: str
    #: What it is, in people's words, and the file name it is published under.
    label: str
    published: str


QWEN_IMAGE_VAE = Component("vae", "qwen_image", "Qwen-Image's VAE (Wan 2.1's layout)", "qwen_image_vae.safetensors")
QWEN25_VL = Component("text_encoder", "qwen_image", "the Qwen2.5-VL text encoder Qwen-Image reads",
                      "qwen_2.5_vl_7b.safetensors")  # fmt: skip
FLUX2_VAE = Component("vae", "flux2", "FLUX.2's VAE (BFL's layout)", "flux2-vae.safetensors")


def strip_component_prefix(keys: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a VAE export prefix (``first_stage_model.``, ``vae.``) where every key has it."""
    for prefix in VAE_PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys):
            return {k[len(prefix):]: v for k, v in keys.items()}
    return dict(keys)


def component_of(shapes: Mapping[str, Sequence[int]]) -> Component | None:
    """The published component these tensor names and shapes are, or None."""
    keys = strip_component_prefix(shapes)
    if "encoder.downsamples.0.residual.0.gamma" in keys and "decoder.upsamples.0.residual.0.gamma" in keys:
        return QWEN_IMAGE_VAE
    if "encoder.down.0.block.0.conv1.weight" in keys and "bn.running_mean" in keys:
        return FLUX2_VAE
    if ("model.embed_tokens.weight" in keys and "model.layers.0.self_attn.k_proj.bias" in keys
            and "model.layers.0.self_attn.q_norm.weight" not in keys):  # fmt: skip
        return QWEN25_VL  # Qwen2.x attention has q/k/v biases; Qwen3's has q_norm/k_norm instead
    return None


def find_component(folders: Sequence[Path], wanted: Component,
                   shapes_of: Callable[[Path], Mapping[str, Sequence[int]]]) -> Path | None:
    """The first ``.safetensors`` in ``folders`` that is ``wanted``; ``shapes_of`` reads a header
    (the runtime passes :func:`engine.inspect.read_header`'s, which names a truncated file)."""
    for folder in folders:
        for candidate in sorted(folder.glob("*.safetensors")):
            if component_of(shapes_of(candidate)) == wanted:
                return candidate
    return None


def named(path: Path, build: Callable[[], Any]) -> Any:
    """Load a component, its refusal naming its file (a components folder holds several)."""
    try:
        return build()
    except EngineError as exc:
        raise EngineError(exc.code, f"'{path.name}': {exc.message}") from exc
    except (KeyError, ValueError, RuntimeError) as exc:  # a tensor of the wrong shape or missing
        if "out of memory" in str(exc).lower():
            raise
        raise EngineError(ErrorCode.CORRUPT_FILE, f"'{path.name}' does not fit the layout it was recognised as "
                          f"({type(exc).__name__}: {exc}); re-download it") from exc  # fmt: skip
