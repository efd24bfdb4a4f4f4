"""What this engine can run, in one place: the loader reads it, and so does every inspection.

Registration used to refuse only files of an unknown architecture, so a FLUX checkpoint was
registered and every job on it failed after waiting in the queue. Now each ``POST /inspect``
answer carries the engine's own verdict (``FileInfo.cannot_run``): the bot never keeps a list
of what the engine runs, so an engine that loads FLUX flips one flag in its architecture
module (``engine.arch.flux.RUNS``) and the bot follows. Torch-free: :mod:`engine.inspect` and the bot-facing protocol import it.
"""

from __future__ import annotations

from engine import arch
from engine.protocol import architecture_label

#: The architectures this engine builds text-to-image pipelines for: those whose module in
#: :mod:`engine.arch` says ``runnable`` (FLUX's ``engine.arch.flux.RUNS``).
RUNNABLE_ARCHITECTURES: tuple[str, ...] = arch.runnable()

#: LoRA-like maths no patcher here applies (engine.loras.reader refuses a file made only of
#: them), with the name people know each by.
UNAPPLIED_FORMATS: dict[str, str] = {"oft": "LyCORIS OFT", "glora": "LyCORIS GLoRA"}
APPLIED_FORMATS_TEXT = "LoRA, LoCon, LoHa, LoKr, full/diff, (IA)3 or DoRA"

#: Checkpoint variants whose UNet is not a text-to-image one (conv_in input channels, or the
#: SDXL refiner's single OpenCLIP-G context), with how to say what they are.
VARIANT_TEXT: dict[str, str] = {
    "inpainting": "inpainting checkpoint (its UNet takes 9 input channels: image, mask and noise)",
    "instruct-pix2pix": "InstructPix2Pix checkpoint (its UNet takes 8 input channels: image and noise)",
    "refiner": "refiner checkpoint (it refines images another model made and cannot start one from text)",
}


def runs_text(last: str = " and ") -> str:
    """``"SD 1.5, SDXL and FLUX.1"``: what this engine makes images with, in people's names
    (``last=" or "``: "SD 1.5, SDXL or FLUX.1")."""
    labels = [architecture_label(a) for a in RUNNABLE_ARCHITECTURES]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + last + labels[-1]


def _either_text() -> str:
    labels = [architecture_label(a) for a in RUNNABLE_ARCHITECTURES]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " or " + labels[-1]


def _article(label: str) -> str:
    # "an SD 3", "an SDXL" (said "ess-dee"), "a FLUX.1", "a Qwen-Image".
    return "an" if label[:1] in "AEIOU" or label.startswith("SD") else "a"


def describe(kind: str, architecture: str, *, family_text: str | None = None, variant: str | None = None) -> str:
    """What a file is, in words: "a FLUX.1 checkpoint", "a LoRA for FLUX.1", "an SD 1.5
    inpainting checkpoint". ``family_text`` names a family that has no architecture of its own
    here ("Qwen-Image", "a diffusion transformer (DiT) family this engine does not know")."""
    label = family_text or architecture_label(architecture)
    if kind == "checkpoint":
        if variant in VARIANT_TEXT:
            return f"{_article(label)} {label} {VARIANT_TEXT[variant]}"
        if family_text and not family_text[:1].isupper():
            return f"a checkpoint of {family_text}"
        return f"{_article(label)} {label} checkpoint"
    noun = {"lora": "a LoRA", "embedding": "an embedding"}.get(kind, "a file")
    if family_text and not family_text[:1].isupper():
        return f"{noun} for a model of {family_text}"
    return f"{noun} for {label}"


def cannot_run(
    path: str,
    kind: str,
    architecture: str,
    *,
    lora_format: str | None = None,
    family_text: str | None = None,
    variant: str | None = None,
) -> str | None:
    """Why this engine cannot make images with (or apply) a file, naming what the file is,
    what the engine runs and what to do instead; None when it can.

    Only what the file's header proves counts: a LoRA or embedding whose architecture could
    not be read is not refused here (the registry records it as unknown), but one recognised
    as another architecture's is, as is any checkpoint the loader would refuse.
    """
    runs = runs_text()
    either = _either_text()
    if kind == "checkpoint":
        if variant in VARIANT_TEXT:
            what = describe(kind, architecture, variant=variant)
            return (
                f"`{path}` is {what}; this engine makes images from text with plain {runs} "
                f"checkpoints only: pick the text-to-image checkpoint it was made from, or another {either} checkpoint."
            )
        spec = arch.get(architecture)
        found = spec.variants.get(variant or "") if spec is not None else None
        # An edit model (FLUX.1 Kontext, Qwen-Image-Edit) runs: its runtime's ``edit`` with a
        # picture, text-to-image without one (engine.picture_run).
        if (
            architecture in RUNNABLE_ARCHITECTURES
            and found is not None
            and found.capabilities is not None
            and not {"txt2img", "edit"} & found.capabilities
        ):
            return (
                f"`{path}` is a {found.label} checkpoint, made for {' and '.join(sorted(found.capabilities))} "
                f"rather than text-to-image, which is what this engine does: pick a text-to-image {spec.label} checkpoint."
            )
        if architecture in RUNNABLE_ARCHITECTURES and found is not None and not found.runs:
            return (
                f"`{path}` is a {found.label} checkpoint, which this engine does not run yet: pick "
                f"{_article(either)} {either} checkpoint instead."
            )
        if architecture in RUNNABLE_ARCHITECTURES:
            return None
        if architecture == "unknown" and not family_text:
            return (
                f"`{path}` is a checkpoint whose architecture I could not tell; this engine runs "
                f"{runs} models only: pick {_article(either)} {either} checkpoint."
            )
        what = describe(kind, architecture, family_text=family_text)
        return f"`{path}` is {what}, and this engine runs {runs} models only: pick {_article(either)} {either} checkpoint instead."
    if kind in ("lora", "embedding"):
        if kind == "lora" and lora_format:
            unapplied = [UNAPPLIED_FORMATS[f] for f in lora_format.split("+") if f in UNAPPLIED_FORMATS]
            if unapplied and len(unapplied) == len(lora_format.split("+")):
                return (
                    f"`{path}` is a {' + '.join(unapplied)} file, a format this engine cannot apply: "
                    f"use a {APPLIED_FORMATS_TEXT} file."
                )
        if architecture in RUNNABLE_ARCHITECTURES or (architecture == "unknown" and not family_text):
            return None
        what = describe(kind, architecture, family_text=family_text)
        return (
            f"`{path}` is {what}, and this engine runs {runs} models only, so no model here could use it: "
            f"pick a version of it made for {either}."
        )
    return None
