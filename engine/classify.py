"""What a safetensors header describes: a LoRA-like network (and its maths and key layout), a
textual-inversion embedding, a checkpoint, a VAE, or nothing we know.

Everything here reads only key names, shapes and metadata strings, so it runs on the JSON header
of a 6 GB file in microseconds and stays free of torch. Key names are the real ones each tool
writes (checked against their sources):

- kohya sd-scripts: ``lora_unet_*`` / ``lora_te_*`` / ``lora_te1_*`` / ``lora_te2_*`` with
  ``.lora_down.weight``, ``.lora_up.weight``, ``.alpha``; LoCon puts them on 3x3 convs.
- LyCORIS (same prefixes): LoCon ``.lora_mid.weight`` (Tucker), LoHa ``.hada_w1_a/_b``,
  ``.hada_w2_a/_b`` (+ ``.hada_t1/_t2``), LoKr ``.lokr_w1`` or ``.lokr_w1_a/_b``, ``.lokr_w2``
  or ``.lokr_w2_a/_b`` (+ ``.lokr_t2``), full ``.diff`` (+ ``.diff_b``), (IA)3 ``.weight`` +
  ``.on_input``, DoRA ``.dora_scale``, OFT ``.oft_blocks``/``.oft_diag``, GLoRA ``.a1.weight``...
- diffusers ``save_lora_weights``: ``unet.…lora_A.weight`` / ``text_encoder.…lora_B.weight``;
  the older attention-processor layout ``…processor.to_q_lora.down.weight`` and
  ``…lora_linear_layer.up.weight``; PEFT ``base_model.model.…lora_A.weight``.
- OneTrainer: kohya keys by default; OMI layout with ``unet.``/``clip_l.``/``clip_g.`` prefixes;
  bundled embeddings ``bundle_emb.<name>.clip_l`` (``.clip_g``).
- Textual inversion: A1111/kohya ``emb_params`` (SD 1.5), ``clip_l`` + ``clip_g`` (SDXL).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from engine.protocol import Architecture

# --- LoRA-like networks --------------------------------------------------------------------

#: Key suffix -> the maths it belongs to. Longest first, so ".lora_down.weight" wins over ".weight".
_NETWORK_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_linear_layer.down.weight", "lora"),
    (".lora_linear_layer.up.weight", "lora"),
    ("_lora.down.weight", "lora"),
    ("_lora.up.weight", "lora"),
    (".lora_magnitude_vector.weight", "dora"),
    (".lora_magnitude_vector", "dora"),
    (".lora_down.weight", "lora"),
    (".lora_up.weight", "lora"),
    (".lora_mid.weight", "locon"),
    (".lora.down.weight", "lora"),
    (".lora.up.weight", "lora"),
    (".lora_A.weight", "lora"),
    (".lora_B.weight", "lora"),
    (".lora_A.default.weight", "lora"),
    (".lora_B.default.weight", "lora"),
    (".hada_w1_a", "loha"),
    (".hada_w1_b", "loha"),
    (".hada_w2_a", "loha"),
    (".hada_w2_b", "loha"),
    (".hada_t1", "loha"),
    (".hada_t2", "loha"),
    (".lokr_w1_a", "lokr"),
    (".lokr_w1_b", "lokr"),
    (".lokr_w2_a", "lokr"),
    (".lokr_w2_b", "lokr"),
    (".lokr_w1", "lokr"),
    (".lokr_w2", "lokr"),
    (".lokr_t2", "lokr"),
    (".dora_scale", "dora"),
    (".diff_b", "full"),
    (".diff", "full"),
    (".on_input", "ia3"),
    (".oft_blocks", "oft"),
    (".oft_diag", "oft"),
    (".a1.weight", "glora"),
    (".a2.weight", "glora"),
    (".b1.weight", "glora"),
    (".b2.weight", "glora"),
)
#: Keys that belong to a module without saying its maths (scales, biases of a LoRA pair).
_NEUTRAL_SUFFIXES = (".alpha", ".scale", ".rescale", ".bias", ".weight")
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "lora_transformer_", "lora_prior_")
_OMI_PREFIXES = ("clip_l.", "clip_g.")
#: The order formats are named in when one file mixes several.
_FORMAT_ORDER = ("lora", "locon", "loha", "lokr", "full", "ia3", "oft", "glora")
BUNDLE_PREFIX = "bundle_emb."


def _split_network_key(key: str) -> tuple[str, str] | None:
    """(module, maths) for a key that names a network tensor, else None."""
    for suffix, maths in _NETWORK_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], maths
    return None


def _is_kohya_module(module: str) -> bool:
    return module.startswith(_KOHYA_PREFIXES)


@dataclass(frozen=True)
class NetworkReading:
    """What the keys of a LoRA-like file say about it."""

    lora_format: str
    key_format: str
    rank: int | None
    bundled_embeddings: tuple[str, ...]


def read_network(tensors: dict[str, dict[str, Any]]) -> NetworkReading | None:
    """The maths and layout of a LoRA-like file, or None when no key is a network tensor."""
    modules: dict[str, set[str]] = {}
    bundled: list[str] = []
    for key in tensors:
        if key.startswith(BUNDLE_PREFIX):
            name = key[len(BUNDLE_PREFIX) :].rsplit(".", 1)[0]
            if name and name not in bundled:
                bundled.append(name)
            continue
        split = _split_network_key(key)
        if split is not None:
            modules.setdefault(split[0], set()).add(split[1])
    # (IA)3 stores its vector as "<module>.weight" beside the "on_input" flag found above.
    if not modules:
        return None
    formats: set[str] = set()
    for module, kinds in modules.items():
        base = kinds - {"dora"}
        if "locon" in base:
            base = (base - {"lora"}) | {"locon"}
        elif base == {"lora"} and _is_conv_kxk(tensors, module):
            base = {"locon"}
        formats |= base
    if "locon" in formats:  # LoCon is LoRA on linears plus convs: the file as a whole is LoCon
        formats.discard("lora")
    ordered = [f for f in _FORMAT_ORDER if f in formats]
    has_dora = any("dora" in kinds for kinds in modules.values())
    if has_dora:
        ordered = ["dora"] if ordered in ([], ["lora"]) else [*ordered, "dora"]
    lora_format = "+".join(ordered) or "lora"
    return NetworkReading(
        lora_format=lora_format,
        key_format=_key_layout(list(modules), tensors),
        rank=_network_rank(tensors, modules),
        bundled_embeddings=tuple(bundled),
    )


def _is_conv_kxk(tensors: dict[str, dict[str, Any]], module: str) -> bool:
    """A LoRA pair on a convolution with a kernel larger than 1x1 is LoCon (kohya's conv_dim)."""
    for suffix in (".lora_down.weight", ".lora_A.weight", ".lora.down.weight"):
        entry = tensors.get(module + suffix)
        if entry is not None:
            shape = entry["shape"]
            return len(shape) == 4 and (shape[2] > 1 or shape[3] > 1)
    return False


_OLD_DIFFUSERS_SUFFIXES = (
    "_lora.down.weight", "_lora.up.weight", ".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight",
)  # fmt: skip


def _key_layout(modules: list[str], tensors: dict[str, dict[str, Any]]) -> str:
    if all(_is_kohya_module(m) for m in modules):
        return "kohya"
    if any(m.startswith("base_model.model.") for m in modules):
        return "peft"
    if any(k.endswith(_OLD_DIFFUSERS_SUFFIXES) for k in tensors):
        return "diffusers_old"
    if any(m.startswith(_OMI_PREFIXES) for m in modules):
        return "omi"
    if all(m.startswith(("unet.", "text_encoder.", "text_encoder_2.", "transformer.")) for m in modules):
        return "diffusers"
    if all(m.startswith(("down_blocks.", "mid_block.", "up_blocks.")) for m in modules):
        return "diffusers"
    return "unknown"


def _network_rank(tensors: dict[str, dict[str, Any]], modules: dict[str, set[str]]) -> int | None:
    """The most common inner dimension: lora_down rows, hada_w1_b rows, lokr_w2_b rows..."""
    ranks: list[int] = []
    for module in modules:
        for suffix, axis in (
            (".lora_down.weight", 0),
            (".lora_A.weight", 0),
            (".lora.down.weight", 0),
            ("_lora.down.weight", 0),
            (".lora_linear_layer.down.weight", 0),
            (".hada_w1_b", 0),
            (".lokr_w2_b", 0),
            (".lokr_w1_b", 0),
        ):
            entry = tensors.get(module + suffix)
            if entry is not None and len(entry["shape"]) >= 2:
                ranks.append(int(entry["shape"][axis]))
                break
    return most_common(ranks)


def is_network_key(key: str) -> bool:
    return _split_network_key(key) is not None or key.startswith(BUNDLE_PREFIX)


# --- embeddings, checkpoints, VAEs --------------------------------------------------------

#: Text-encoder widths of real embeddings: CLIP-L 768 (SD 1.5), OpenCLIP-H 1024 (SD 2).
_SD2_WIDTH = 1024


@dataclass(frozen=True)
class EmbeddingReading:
    architecture: Architecture
    vectors: int
    encoders: tuple[str, ...]


def read_embedding(tensors: dict[str, dict[str, Any]]) -> EmbeddingReading | None:
    """A textual-inversion file: ``emb_params`` (or a converted ``string_to_param.*``) for one
    CLIP encoder, ``clip_l`` + ``clip_g`` for SDXL's two. Anything else is not an embedding."""
    keys = set(tensors)
    if keys == {"clip_l", "clip_g"}:
        shapes = [tensors[k]["shape"] for k in ("clip_l", "clip_g")]
        if all(len(s) == 2 for s in shapes) and shapes[0][0] == shapes[1][0]:
            return EmbeddingReading("sdxl", int(shapes[0][0]), ("clip_l", "clip_g"))
        return None
    if keys == {"clip_g"}:  # Stable Cascade: not an architecture the engine runs
        shape = tensors["clip_g"]["shape"]
        return EmbeddingReading("unknown", int(shape[0]), ("clip_g",)) if len(shape) == 2 else None
    if len(keys) == 1:
        (key,) = keys
        if key == "emb_params" or key.startswith("string_to_param."):
            shape = tensors[key]["shape"]
            if len(shape) == 2:
                arch: Architecture = "unknown" if shape[1] == _SD2_WIDTH else "sd15"
                return EmbeddingReading(arch, int(shape[0]), ("clip_l",))
    return None


_CHECKPOINT_PREFIXES = ("model.diffusion_model.", "conv_in.", "double_blocks.", "joint_blocks.")
_CHECKPOINT_SUFFIXES = ("time_embedding.linear_1.weight", "time_embed.0.weight")
_VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


def looks_like_checkpoint(keys: Iterable[str]) -> bool:
    return any(k.startswith(_CHECKPOINT_PREFIXES) or k.endswith(_CHECKPOINT_SUFFIXES) for k in keys)


def looks_like_vae(keys: list[str]) -> bool:
    """A standalone VAE: every key is the autoencoder's (ldm or diffusers names)."""
    return bool(keys) and all(k.startswith(_VAE_PREFIXES) for k in keys) and any(
        k.startswith("decoder.") for k in keys
    )


def prediction_from(keys: Iterable[str], metadata: dict[str, str]) -> tuple[str | None, bool]:
    """(prediction type, zero terminal SNR) a checkpoint declares.

    NoobAI-style v-prediction checkpoints carry empty ``v_pred`` and ``ztsnr`` marker tensors
    (read by ComfyUI and Forge); kohya and the SAI model spec write ``modelspec.prediction_type``
    ("epsilon" or "v"). Without either, the file does not say (None): an SD 1.5/SDXL base default.
    """
    keyset = set(keys)
    ztsnr = "ztsnr" in keyset
    if "v_pred" in keyset:
        return "v_prediction", ztsnr
    declared = metadata.get("modelspec.prediction_type", "").strip().lower()
    if declared in ("v", "v_prediction", "v-prediction", "vpred", "v_pred"):
        return "v_prediction", ztsnr
    if declared in ("epsilon", "eps"):
        return "epsilon", ztsnr
    return None, ztsnr


def trained_clip_skip(metadata: dict[str, str]) -> int | None:
    """kohya's ``ss_clip_skip`` ("2", or "None" when it was not set)."""
    try:
        value = int(metadata.get("ss_clip_skip", ""))
    except ValueError:
        return None
    return value if 1 <= value <= 12 else None


def network_module_algo(metadata: dict[str, str]) -> str | None:
    """LyCORIS records its algorithm in ``ss_network_args`` ({"algo": "loha", ...})."""
    try:
        args = json.loads(metadata.get("ss_network_args", "") or "{}")
    except json.JSONDecodeError:
        return None
    algo = args.get("algo") if isinstance(args, dict) else None
    return str(algo).lower() if algo else None


def most_common(values: Iterable[Any]) -> Any | None:
    counts = Counter(values)
    if not counts:
        return None
    best = max(counts.values())
    return max(v for v, c in counts.items() if c == best)


def adapter_configs(metadata: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each component's PEFT ``LoraConfig`` (r, lora_alpha, rank_pattern, alpha_pattern,
    use_rslora) from diffusers' ``lora_adapter_metadata``; without one a file means scale 1.

    diffusers' ``save_lora_weights`` writes ONE flat JSON object whose keys carry the component
    as a prefix (``"unet.r"``, ``"unet.lora_alpha"``, ``"text_encoder.alpha_pattern"``:
    ``_pack_dict_with_prefix`` in ``diffusers/loaders/lora_base.py``), and ``load_lora_adapter``
    reads a component's config back by keeping the keys that start with ``"<component>."``.
    Reading it any other way loses alpha/r and applies the file at r/alpha times its strength.
    A nested ``{"unet": {...}}`` object, which no writer we know of produces but older Atelier
    files did, is still read. The engine (``engine.loras.reader``) and inspection both use this,
    so the alpha the registry shows is the one generation applies.
    """
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    configs: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        component, dot, field = str(key).partition(".")
        if dot and component and field:
            configs.setdefault(component, {})[field] = value
        elif not dot and isinstance(value, dict):
            configs.setdefault(component, {}).update(value)
    return configs
