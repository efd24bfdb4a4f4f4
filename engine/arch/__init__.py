"""The architectures Atelier knows, registered in one place: everything else asks here.

An architecture is what decides which code runs a file: SD 1.5, SDXL, FLUX.1 (and SD 3,
recognised and refused by name). Not to be confused with a *family* (Pony, Illustrious:
fine-tune lineage within one architecture, :mod:`engine.families`).

Each architecture is a module with two halves:

- a torch-free :class:`~engine.arch.base.Architecture` (``engine/arch/<name>.py`` or
  ``engine/arch/<name>/__init__.py``): how its files are recognised from header keys and
  metadata, its Civitai names (AIR ecosystems, ``baseModel``), size rule and presets,
  samplers and defaults, guidance kind and range, negative prompt, prompt budget,
  capabilities, whether this engine runs it, and what its jobs must share to share a batch.
  The bot (validation, registry checks, the ``/imagine`` menus, Civitai planning), the
  protocol's architecture names, the schema's accepted values and the inspector all read it.
- a runtime (torch; named by ``Architecture.runtime``: ``"module"`` exposing ``RUNTIME``, or
  ``"module:attribute"``; a :class:`engine.arch.runtime.Runtime`): loading, the modules a LoRA may patch and how file
  keys map onto them, prompt encoding, latents and the pipeline call. Only the engine imports
  it (:func:`runtime_of`; not ``runtime``, the name of the protocol's submodule), and only for an architecture it runs.

How to add an architecture (Z-Image, Qwen-Image, FLUX.2 Klein, Chroma, ...):

1. Write ``engine/arch/<name>.py`` (or a package) defining one ``Architecture``: at least
   ``name``, ``label``, ``runnable`` and whatever recognises its files (``dit`` for a
   diffusion transformer, ``pipeline_classes`` for diffusers folders, ``metadata_hints``),
   plus its ``ecosystems`` and ``base_models`` so Civitai's names map onto it. If it was in
   :data:`NAMED_ONLY` (recognised by name only), remove it from there.
2. Add it to :data:`_MODULES` below, in menu order. Nothing else lists architectures: the
   protocol, the bot's validation and menus, and the database (no ``CHECK`` on names since
   migration 010) follow.
3. To run it, write its runtime module (``RUNTIME = ...`` implementing
   :class:`engine.arch.runtime.Runtime`), ship its component configs in ``data/configs/``,
   and set ``runnable=True``. Until then files of it are refused by name at registration.
4. Tests: ``tests/engine/test_arch.py`` builds its files (``tests/dit_files.py``) and checks
   recognition, Civitai names and the size rule.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from engine.arch.base import Architecture
from engine.arch.flux import FLUX
from engine.arch.flux2 import FLUX2
from engine.arch.qwen_image import QWEN_IMAGE
from engine.arch.sd3 import SD3
from engine.arch.sd15 import SD15
from engine.arch.sdxl import SDXL
from engine.arch.zimage import ZIMAGE

#: Every architecture, in the order menus show them.
_MODULES: tuple[Architecture, ...] = (SD15, SDXL, SD3, FLUX, ZIMAGE, QWEN_IMAGE, FLUX2)
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in _MODULES}
#: The value for a file no architecture here recognises.
UNKNOWN = "unknown"
#: Every name a file's architecture may have (what the protocol and the registry accept).
NAMES: tuple[str, ...] = (*ARCHITECTURES, UNKNOWN)

#: Diffusion-transformer families with no module here: recognised from their own keys so the
#: refusal names them. (pattern on the denoiser's module path, name people know it by)
NAMED_ONLY: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^distilled_guidance_layer[._]"), "Chroma"),
    (re.compile(r"^(double_layers|single_layers)[._]"), "AuraFlow"),
    (re.compile(r"^(double_stream_blocks|single_stream_blocks)[._]"), "HiDream"),
)
#: What a DiT file that neither a module nor NAMED_ONLY recognises is called.
UNKNOWN_DIT = "a diffusion-transformer (DiT) family this engine does not know"


def get(name: str) -> Architecture | None:
    """The architecture called ``name``, or None (``"unknown"`` and names of newer builds)."""
    return ARCHITECTURES.get(name)


def label(name: str) -> str:
    """``"sdxl"`` -> ``"SDXL"``; a name this build does not know is shown as it is."""
    if name == UNKNOWN:
        return "an unknown architecture"
    found = ARCHITECTURES.get(name)
    return found.label if found else name


def runnable() -> tuple[str, ...]:
    """The architectures this engine makes images with, in menu order."""
    return tuple(a.name for a in _MODULES if a.runnable)


def from_ecosystem(ecosystem: str) -> str:
    """A Civitai AIR ecosystem -> the architecture that runs it, or ``"unknown"``."""
    ecosystem = ecosystem.lower()
    for arch in _MODULES:
        if ecosystem in arch.ecosystems:
            return arch.name
    return UNKNOWN


def ecosystem_of(name: str) -> str | None:
    """The ecosystem written into a canonical AIR for a file of architecture ``name``."""
    found = ARCHITECTURES.get(name)
    return found.ecosystems[0] if found and found.ecosystems else None


def from_base_model(base_model: str) -> tuple[str, str | None, str]:
    """Civitai's ``baseModel`` -> (architecture, variant or None, family).

    ``"Flux.1 D"`` -> ``("flux", "dev", "unknown")``, ``"Pony"`` -> ``("sdxl", None, "pony")``.
    Prefixes are matched longest first across every architecture, so "SDXL 1.0 LCM" is SDXL
    and "Flux.1 Kontext" is not taken for the bare "Flux.1". Anything else is unknown.
    """
    text = " ".join(base_model.lower().split())
    if text.startswith("pony v7"):  # an AuraFlow model, not SDXL
        return UNKNOWN, None, "unknown"
    names = sorted(
        ((entry, arch) for arch in _MODULES for entry in arch.base_models),
        key=lambda pair: -len(pair[0].prefix),
    )
    for entry, arch in names:
        if text.startswith(entry.prefix):
            return arch.name, entry.variant, entry.family
    return UNKNOWN, None, "unknown"


def from_pipeline_class(class_name: str) -> tuple[str, str | None]:
    """A diffusers ``model_index.json`` ``_class_name`` -> (architecture, variant)."""
    for arch in _MODULES:
        if class_name in arch.pipeline_classes:
            return arch.name, arch.pipeline_classes[class_name]
    return UNKNOWN, None


def from_metadata(metadata: dict[str, str]) -> str | None:
    """What ``modelspec.architecture`` or kohya's ``ss_base_model_version`` says, or None."""
    for key in ("modelspec.architecture", "ss_base_model_version"):
        value = metadata.get(key, "")
        if not value:
            continue
        # SDXL's needles before SD 1.5's and FLUX's before SD 3's, as the hints were always read.
        # Modules added later are asked after these (their needles are their own names).
        for arch in (SDXL, FLUX, SD3, SD15, *(a for a in _MODULES if a not in (SDXL, FLUX, SD3, SD15))):
            if arch.metadata_match(value):
                return arch.name
    return None


def runtime_of(name: str) -> Any:
    """The engine-side runtime of architecture ``name`` (imports torch). Raises LookupError
    for an architecture without one."""
    found = ARCHITECTURES.get(name)
    if found is None or found.runtime is None or not found.runnable:
        raise LookupError(f"no runtime for architecture {name!r}")
    module, _, attribute = found.runtime.partition(":")
    return getattr(importlib.import_module(module), attribute or "RUNTIME")


__all__ = [
    "ARCHITECTURES",
    "NAMED_ONLY",
    "NAMES",
    "UNKNOWN",
    "UNKNOWN_DIT",
    "Architecture",
    "ecosystem_of",
    "from_base_model",
    "from_ecosystem",
    "from_metadata",
    "from_pipeline_class",
    "get",
    "label",
    "runnable",
    "runtime_of",
]
