"""What an architecture is, as data both processes read: the torch-free half of each module.

The bot validates requests, offers sizes and samplers, recognises Civitai's names and refuses
files before any GPU second; the engine recognises files and picks its runtime. Each of those
used to keep its own copy of "what SD 1.5 / SDXL / FLUX need" (a ``Literal`` here, a ``CHECK``
there, a size table in the validator, a pipeline-class map in the loader). An
:class:`Architecture` holds all of it for one architecture, and :mod:`engine.arch` registers
them in one place. No torch and no ``engine.protocol`` import: the protocol itself reads the
registry, so this module must sit below it.

"family" already means fine-tune lineage here (Pony, Illustrious: :mod:`engine.families`);
an architecture is what decides which code runs a file (SDXL runs Pony and Illustrious alike).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

#: A file's header: tensor name -> {"dtype", "shape", "data_offsets"} (no ``__metadata__``).
Tensors = Mapping[str, Mapping[str, Any]]

GuidanceKind = Literal["cfg", "distilled", "none"]
PromptKind = Literal["clip_chunks", "t5", "llm"]
#: What a model of an architecture can be asked to do (image-to-image and edit come later).
Capability = Literal["txt2img", "img2img", "inpaint", "edit"]


@dataclass(frozen=True)
class Guidance:
    """How the prompt steers the image, and the range a member may set.

    ``cfg``: classifier-free guidance, one conditioned and one unconditioned row per image
    per step when the scale is above 1 (SD). ``distilled``: the scale is an input of the
    model (FLUX dev's guidance embedding), one row, no negative. ``none``: the model was
    distilled to ignore it (FLUX schnell); a value the member sets is noted and not used.
    """

    kind: GuidanceKind
    default: float
    #: The range models of this kind handle; None where only the server's bounds apply.
    low: float | None = None
    high: float | None = None
    #: What to suggest in a message ("3.5", "5 to 8").
    typical: str = ""

    @property
    def two_rows(self) -> bool:
        """True when a scale above 1 costs a second (unconditioned) row per image."""
        return self.kind == "cfg"

    def rows_per_image(self, scale: float) -> int:
        return 2 if self.kind == "cfg" and scale > 1 else 1


@dataclass(frozen=True)
class PromptBudget:
    """How much prompt the text encoder reads.

    ``clip_chunks``: A1111's 75-token CLIP chunks, as many as needed, nothing cut.
    ``t5``: one T5 sequence of at most ``tokens`` tokens; natural language, never 77-cut.
    ``llm``: one sequence through a language model's chat template (Qwen3 for Z-Image), at
    most ``tokens`` tokens with the template's own.
    """

    kind: PromptKind
    tokens: int
    #: A1111 ``(word:1.3)`` emphasis weights the encoder's output (CLIP) rather than text.
    emphasis: bool = True


@dataclass(frozen=True)
class SizeRule:
    """Sizes an architecture makes well: each side a multiple of ``multiple``, the area in
    [min_pixels, max_pixels]; ``presets`` are (label, "WxH") offered in menus."""

    multiple: int
    min_pixels: int
    max_pixels: int
    hint: str
    default: tuple[int, int]
    presets: tuple[tuple[str, str], ...] = ()

    def side_problem(self, side: int) -> tuple[int, int] | None:
        """(lower, upper) multiples around ``side`` when it is not one, else None."""
        if side % self.multiple == 0:
            return None
        lower = side - side % self.multiple
        return lower, lower + self.multiple

    def area_problem(self, width: int, height: int) -> str | None:
        """"small" or "large" when width x height is outside the range, else None."""
        area = width * height
        if area < self.min_pixels:
            return "small"
        if area > self.max_pixels:
            return "large"
        return None


@dataclass(frozen=True)
class Variant:
    """A model of an architecture whose files and defaults differ (FLUX dev and schnell).

    Fields left None take the architecture's.
    """

    name: str
    label: str
    steps: int | None = None
    guidance: Guidance | None = None
    prompt_budget: PromptBudget | None = None
    uses_negative: bool | None = None
    capabilities: frozenset[str] | None = None
    #: False for a variant of a runnable architecture that this engine does not run (FLUX.2 dev,
    #: whose text encoder is Mistral's, beside the Klein models it runs): refused by name.
    runs: bool = True
    #: The weights' size where variants differ in it (FLUX.2 Klein "4b" / "9b"): a LoRA trained
    #: for one size never fits another, and is refused before the model is loaded.
    size: str | None = None
    #: How many input pictures an edit takes at most (the first is the one edited).
    max_images: int = 1


@dataclass(frozen=True)
class BaseModelName:
    """A Civitai ``baseModel`` (matched as a lower-case prefix, longest first across all
    architectures) and what it means here."""

    prefix: str
    variant: str | None = None
    #: An :mod:`engine.families` name, or "unknown".
    family: str = "unknown"


@dataclass(frozen=True)
class DitRule:
    """How a diffusion-transformer file of this architecture is told from others.

    ``structure`` sees the denoiser's module paths (tool prefixes stripped) and says yes
    only where the key layout is this architecture's own (FLUX's ``double_blocks``). Every
    architecture's ``structure`` is asked before any ``shape``: ``shape`` sees the attention
    width and whether the file has joint (MMDiT) and separate cross-attention, for layouts
    several DiTs share (diffusers' ``transformer_blocks.N.attn.to_q``).
    """

    structure: Callable[[tuple[str, ...]], bool]
    shape: Callable[[int | None, bool, bool, tuple[str, ...]], bool]
    #: Asked before any ``structure`` (and before the named-only families), with every
    #: denoiser module's flattened path and its (out, in) features where the file shows them
    #: (a weight's shape, a LoRA's up rows and down columns): for a family whose key names
    #: another's layout also uses and only its shapes tell apart (FLUX.2's BFL names are
    #: FLUX.1's, with a 6x SwiGLU MLP instead of 4x).
    modules: Callable[[Mapping[str, tuple[int | None, int | None]]], bool] | None = None
    #: Lower is asked first, where two rules could both say yes (FLUX's width rule before
    #: SD 3's ``pos_embed`` one: a 3072-wide joint DiT with a ``pos_embed`` is FLUX).
    priority: int = 100


@dataclass(frozen=True)
class Architecture:
    """One architecture's rules: see :mod:`engine.arch` for how to add one."""

    name: str
    #: How people write it in messages ("SDXL", "FLUX.1").
    label: str
    #: True when this engine makes images with it; False: recognised and refused by name.
    runnable: bool
    #: Civitai AIR ecosystems that run on it (``urn:air:<ecosystem>:...``), the first the one
    #: written into a canonical AIR.
    ecosystems: tuple[str, ...] = ()
    #: Civitai ``baseModel`` names.
    base_models: tuple[BaseModelName, ...] = ()
    #: Needles in ``modelspec.architecture`` / ``ss_base_model_version`` metadata.
    metadata_hints: tuple[str, ...] = ()
    #: diffusers ``model_index.json`` class names -> the variant they are (None: the plain one).
    pipeline_classes: Mapping[str, str | None] = field(default_factory=dict)
    dit: DitRule | None = None
    #: The variant a checkpoint's tensors show (FLUX: a guidance input means dev), or None.
    checkpoint_variant: Callable[[Tensors], str | None] | None = None
    #: The variant a LoRA's tensors show (FLUX.2: its width names the Klein size), or None.
    lora_variant: Callable[[Tensors], str | None] | None = None
    #: Text-encoder context widths that identify a UNet of this architecture (SD 1.5: 768).
    context_widths: tuple[int, ...] = ()
    size: SizeRule | None = None
    samplers: tuple[str, ...] = ()
    default_sampler: str = ""
    default_steps: int = 20
    #: Samples by flow matching (the DiTs), so a recipe's ``shift`` applies; SD 1.5 and SDXL
    #: sample by noise prediction and have no shift.
    flow_matching: bool = False
    #: Its denoiser is a UNet, whose convolutions see a neighbourhood, so a large upscale pass
    #: may run in overlapping tiles (:mod:`engine.tiled_denoise`); a diffusion transformer's
    #: attention is global over the image, so a tile would change the picture, not its memory.
    tiled_upscale: bool = False
    guidance: Guidance = Guidance("cfg", 7.0)
    uses_negative: bool = True
    prompt_budget: PromptBudget = PromptBudget("clip_chunks", 75)
    #: The text encoders its prompts go through, in order ("clip_l", "clip_g", "t5").
    text_encoders: tuple[str, ...] = ("clip_l",)
    #: A1111 clip skip and textual-inversion embeddings apply (CLIP-only models).
    clip_skip: bool = True
    #: Where the model reads one fixed CLIP layer whatever clip skip says (SDXL: the
    #: penultimate), what to tell a member who sets more; ``{value}`` is theirs.
    clip_skip_note: str | None = None
    embeddings: bool = True
    capabilities: frozenset[str] = frozenset({"txt2img"})
    variants: Mapping[str, Variant] = field(default_factory=dict)
    default_variant: str | None = None
    #: What jobs on this architecture must share to run in one call, beyond the common key
    #: (:func:`engine.recipe.batching.batch_key`).
    batch_fields: Callable[[Any], tuple[Any, ...]] | None = None
    #: Where its :class:`engine.arch.runtime.Runtime` is: ``"module"`` (its ``RUNTIME``) or
    #: ``"module:attribute"`` (torch);
    #: imported only by the engine, only when the architecture runs.
    runtime: str | None = None

    # --- per-variant reading ---------------------------------------------------------------

    def variant(self, name: str | None) -> Variant | None:
        return self.variants.get(name or self.default_variant or "")

    def guidance_for(self, variant: str | None = None) -> Guidance:
        found = self.variant(variant)
        return found.guidance if found and found.guidance else self.guidance

    def steps_for(self, variant: str | None = None) -> int:
        found = self.variant(variant)
        return found.steps if found and found.steps else self.default_steps

    def negative_for(self, variant: str | None = None) -> bool:
        found = self.variant(variant)
        return found.uses_negative if found and found.uses_negative is not None else self.uses_negative

    def budget_for(self, variant: str | None = None) -> PromptBudget:
        found = self.variant(variant)
        return found.prompt_budget if found and found.prompt_budget else self.prompt_budget

    def metadata_match(self, value: str) -> bool:
        value = value.lower()
        return any(needle in value for needle in self.metadata_hints)


def path_matcher(pattern: str) -> Callable[[tuple[str, ...]], bool]:
    """A ``DitRule.structure`` that is true when any module path matches ``pattern``."""
    compiled = re.compile(pattern)
    return lambda paths: any(compiled.match(p) for p in paths)


def never(*_: Any) -> bool:
    return False


__all__ = [
    "Architecture",
    "BaseModelName",
    "Capability",
    "DitRule",
    "Guidance",
    "PromptBudget",
    "SizeRule",
    "Tensors",
    "Variant",
    "never",
    "path_matcher",
]
