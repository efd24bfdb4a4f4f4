"""Model families: which base a model belongs to, or a LoRA was trained on, within one architecture.

Pony, Illustrious and NoobAI models are all SDXL by architecture, so a LoRA of one loads on the
others without an error, yet it rarely works there: their text encoders and UNets drifted far
from SDXL base during their long fine-tunes. The registry therefore records a family next to
the architecture and warns (never refuses) when a stack mixes families. Torch-free: the bot
uses the labels and the detection runs on header metadata alone.

Where a family comes from, best first: the base checkpoint's hash a kohya LoRA records
(``ss_new_sd_model_hash``, matched by the bot against the models it has registered), the base
checkpoint's name (``ss_sd_model_name``), the model spec's title and the file name. Nothing
else is guessed: "unknown" is honest, and admins correct any entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    architecture: str
    #: The family this one was fine-tuned from, whose LoRAs often carry over.
    parent: str | None = None


_FAMILY_LIST = (
    Family("sd15", "SD 1.5", "sd15"),
    Family("sdxl", "SDXL base", "sdxl"),
    Family("pony", "Pony", "sdxl"),
    Family("illustrious", "Illustrious", "sdxl"),
    Family("noobai", "NoobAI", "sdxl", parent="illustrious"),
    Family("animagine", "Animagine", "sdxl"),
    Family("unknown", "an unknown family", "unknown"),
)
FAMILY_BY_NAME = {f.name: f for f in _FAMILY_LIST}
#: Every family name, in the order a menu shows them ("unknown" last).
FAMILIES: tuple[str, ...] = tuple(FAMILY_BY_NAME)

#: Name fragments (lower case, punctuation removed) that identify a family, most specific first:
#: NoobAI checkpoints are often named after Illustrious, so NoobAI is looked for before it.
_NAME_HINTS: tuple[tuple[str, str], ...] = (
    ("noobai", "noobai"),
    ("noob", "noobai"),
    ("illustrious", "illustrious"),
    ("ponydiffusion", "pony"),
    ("pony", "pony"),
    ("animagine", "animagine"),
    ("sdxlbase", "sdxl"),
    ("sdxl10base", "sdxl"),
    ("stablediffusionxlbase", "sdxl"),
    ("sdxlbase10", "sdxl"),
    ("v15pruned", "sd15"),
    ("stablediffusionv15", "sd15"),
    ("sdv15", "sd15"),
    ("sd15", "sd15"),
)
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def family_label(name: str) -> str:
    """``"pony"`` -> ``"Pony"``; a family this build does not know is shown as it is."""
    family = FAMILY_BY_NAME.get(name)
    return family.label if family else name


def family_architecture(name: str) -> str | None:
    family = FAMILY_BY_NAME.get(name)
    return None if family is None or family.name == "unknown" else family.architecture


def family_from_name(text: str | None, architecture: str | None = None) -> str | None:
    """The family a checkpoint name points to ("ponyDiffusionV6XL_v6" -> "pony"), or None.

    A hint whose family belongs to another architecture than the file's is ignored, so an SD 1.5
    LoRA named "pony-style" is not taken for a Pony SDXL LoRA.
    """
    if not text:
        return None
    squashed = _NOT_ALNUM.sub("", text.lower().rsplit("/", 1)[-1])
    for needle, family in _NAME_HINTS:
        if needle in squashed:
            if architecture in (None, "unknown") or FAMILY_BY_NAME[family].architecture == architecture:
                return family
    return None


def detect_family(
    metadata: dict[str, str], *, architecture: str, kind: str, file_name: str = ""
) -> str:
    """The family a file's header names, or "unknown".

    LoRAs and embeddings say what they were trained on (``ss_sd_model_name``); checkpoints are
    their own base, so their title and file name are read instead. A kohya file trained on
    "sd_xl_base_1.0" is the SDXL base family; a file that names no base stays "unknown".
    """
    if kind == "checkpoint":
        sources = [metadata.get("modelspec.title"), file_name]
    else:
        sources = [metadata.get("ss_sd_model_name"), metadata.get("ss_base_model_name")]
    for source in sources:
        found = family_from_name(source, architecture)
        if found is not None:
            return found
    return "unknown"


def families_differ(lora_family: str, model_family: str) -> bool:
    """True when both are known and not the same (a NoobAI model still differs from Illustrious)."""
    return "unknown" not in (lora_family, model_family) and lora_family != model_family


def related(a: str, b: str) -> bool:
    """One family was fine-tuned from the other (NoobAI from Illustrious)."""
    fa, fb = FAMILY_BY_NAME.get(a), FAMILY_BY_NAME.get(b)
    return bool(fa and fb and (fa.parent == b or fb.parent == a))
