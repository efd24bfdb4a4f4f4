"""The recipe: everything that makes an image, as one frozen value shared by bot and engine.

A recipe names its files the engine's way (paths relative to the configured folders) and
its resources the way people name them (``model_name``, each LoRA's ``name``), and carries
the short hashes AUTOMATIC1111 writes (``model_hash``, each LoRA's ``a1111_hash``), so that
one writer (:mod:`engine.recipe.a1111`) gives the same ``parameters`` text in the engine's
PNG and in the bot's Recipe button. A recipe read from another tool's image has its names
and hashes but no files yet (``model == ""``, ``file == ""``): the bot resolves those
against its registry before anything runs.

Plain dataclasses, no torch: both processes import this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class RecipeError(ValueError):
    """A recipe (JSON, share code) that cannot be read; the message says what is wrong."""


def file_stem(path: str) -> str:
    """``"styles/oil v2.safetensors"`` -> ``"oil v2"``: how tools name a file in their metadata."""
    name = path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class LoraRef:
    """One LoRA of a stack. ``file`` is relative to the LoRA folder ("" = not resolved yet)."""

    file: str
    weight: float
    #: Display name, used in ``<lora:name:w>`` and the A1111 ``Lora hashes``.
    name: str = ""
    #: Expected sha256; when given the engine refuses a file whose content differs.
    sha256: str | None = None
    #: AUTOMATIC1111's LoRA hash (sha256 of the bytes after the safetensors header, 12 hex),
    #: what ``Lora hashes`` carries; Civitai's AutoV3 starts with the same digits.
    a1111_hash: str | None = None

    @property
    def display_name(self) -> str:
        return self.name or file_stem(self.file)


@dataclass(frozen=True)
class EmbeddingRef:
    """A textual-inversion embedding the prompt or negative uses by ``name``."""

    file: str
    name: str
    #: sha256 of the file; A1111's ``TI hashes`` carry its first 12 hex digits, so one read
    #: from another tool's image may hold only those.
    sha256: str | None = None


#: ``Recipe.prediction_type`` values: "" reads it from the model file (keys and metadata).
PREDICTION_TYPES = ("", "epsilon", "v_prediction", "v_prediction_ztsnr")

#: The largest flow-matching shift (``Recipe.shift``) a recipe may fix. Published settings run
#: about 1 to 7 (SD 3 and Qwen-Image-Lightning: 3; Qwen-Image's dynamic one tops out near
#: e^0.9 = 2.5); past 20 nearly every step is spent at full noise.
MAX_SHIFT = 20.0


@dataclass(frozen=True)
class Recipe:
    """Everything needed to reproduce an image, bit for bit on the same machine."""

    model: str
    prompt: str
    negative_prompt: str = ""
    loras: tuple[LoraRef, ...] = ()
    sampler: str = "DPM++ 2M Karras"
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = 0
    width: int = 512
    height: int = 512
    #: Number of images; image ``i`` uses seed ``seed + i``.
    count: int = 1
    #: Display name of the model (defaults to the file name).
    model_name: str = ""
    #: A1111's ``CLIP_stop_at_last_layers``: 2 reads the text encoder's penultimate layer.
    clip_skip: int = 1
    embeddings: tuple[EmbeddingRef, ...] = ()
    #: A VAE file relative to the model folder; empty = the model's own VAE.
    vae: str = ""
    #: A1111's ``Model hash``: Civitai's AutoV2 (the first 10 hex of the file's sha256).
    model_hash: str = ""
    #: How the model predicts noise: "" = as its file says; otherwise an admin's override.
    prediction_type: str = ""
    #: The model's architecture (a name in :mod:`engine.arch`, e.g. "flux") and variant ("dev",
    #: "schnell"), as the registry knows them; "" where not known (a recipe read from text
    #: that does not say). They decide how ``cfg_scale`` is written and read: on FLUX.1 dev
    #: it is the distilled guidance (a model input; Forge's ``Distilled CFG Scale``), and a
    #: model without guidance (schnell) ignores it. The engine reads the file, not these.
    architecture: str = ""
    variant: str = ""
    #: The sampler's eta (TCD's gamma, DDIM's eta); None = the sampler's own default. A1111
    #: writes it as ``Eta``.
    eta: float | None = None
    #: The flow-matching shift of a DiT (FLUX, Z-Image, Qwen-Image, FLUX.2): a fixed shift of
    #: the sigma schedule (Qwen-Image-Lightning's 3); None = the model's own (FLUX.1 dev and
    #: Qwen-Image: resolution-dependent). Forge writes it as ``Shift``.
    shift: float | None = None
    #: Image-to-image (:mod:`engine.recipe.picture`): the input image's sha256 ("" for
    #: text-to-image) and where it came from (the Discord message link it was attached to).
    #: The bytes travel beside the recipe (``POST /inputs``), never inside it.
    init_image: str = ""
    init_image_source: str = ""
    #: Further pictures an edit model reads beside ``init_image``, which stays the one edited
    #: (Qwen-Image-Edit-2509 takes three in all: ``Variant.max_images`` in :mod:`engine.arch`):
    #: their sha256s in order and the message links they came from. Their bytes travel as
    #: ``init_image``'s do (``POST /inputs``); none without an ``init_image``.
    references: tuple[str, ...] = ()
    reference_sources: tuple[str, ...] = ()
    #: A1111's "Denoising strength" of image-to-image: 0 gives the input back (through the
    #: VAE), 1 keeps nothing of it but its size; about ``strength * steps`` steps run.
    strength: float = 0.75
    #: How an input of another size is fitted: "just_resize", "crop_and_resize",
    #: "resize_and_fill" (A1111's resize modes).
    resize_mode: str = "just_resize"
    #: A second, upscaled pass (A1111's hires fix; the Upscale button): the scale (0 = none),
    #: its steps (0 = ``steps``), the upscaler ("Lanczos") and its denoising strength.
    hires_scale: float = 0.0
    hires_steps: int = 0
    hires_upscaler: str = ""
    hires_strength: float = 0.4

    @property
    def guidance_kind(self) -> str:
        """What ``cfg_scale`` is to the model: "cfg" (classifier-free, SD), "distilled" (FLUX.1
        dev's guidance input) or "none" (FLUX.1 schnell); "cfg" where the architecture is unknown."""
        from engine import arch

        spec = arch.get(self.architecture)
        return spec.guidance_for(self.variant or None).kind if spec is not None else "cfg"

    @property
    def pictures(self) -> tuple[str, ...]:
        """Every input picture the recipe names (sha256s), the edited one first: what must reach
        the engine before the job does."""
        return ((self.init_image,) if self.init_image else ()) + tuple(self.references)

    @property
    def model_label(self) -> str:
        """The model as people name it: its registry name, else its file's stem."""
        return self.model_name or file_stem(self.model)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["loras"] = [dataclasses.asdict(lora) for lora in self.loras]
        data["embeddings"] = [dataclasses.asdict(e) for e in self.embeddings]
        data["references"] = list(self.references)
        data["reference_sources"] = list(self.reference_sources)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Recipe:
        """The inverse of :meth:`to_json`. Keys added later take their defaults, so recipes
        stored by an older version keep loading; unknown keys are refused."""
        if not isinstance(data, Mapping):
            raise RecipeError("a recipe must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise RecipeError(f"unknown recipe fields: {sorted(unknown)}")
        values = dict(data)
        values["loras"] = tuple(_ref(LoraRef, item) for item in data.get("loras") or ())
        values["embeddings"] = tuple(_ref(EmbeddingRef, item) for item in data.get("embeddings") or ())
        for name in ("references", "reference_sources"):
            values[name] = _texts(data.get(name) or (), name)
        return cls(**values)


def _texts(items: Any, name: str) -> tuple[str, ...]:
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise RecipeError(f"a recipe's {name} must be a list of strings")
    return tuple(items)


def _ref(kind: type[Any], item: Any) -> Any:
    if not isinstance(item, Mapping):
        raise RecipeError(f"each {kind.__name__} must be a JSON object, not {type(item).__name__}")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = set(item) - known
    if unknown:
        raise RecipeError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
    return kind(**item)
