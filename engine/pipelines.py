"""Loading SD 1.5 / SDXL pipelines offline, from a diffusers folder or one ``.safetensors`` file.

``from_single_file`` normally fetches component configs from the Hub. The engine never goes
online, so it always passes a local config folder: the checkpoint's own sidecar
(``.<file>.config/``, written by the builder for its tiny models) or the real configs shipped
in ``data/configs/<arch>`` (read by :mod:`engine.component_configs`). Only safetensors are ever read: pickles are refused by name before
any loader sees them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine import arch as _arch
from engine.component_configs import config_sidecar, shipped_configs, write_config_folder
from engine.paths import DIFFUSERS_INDEX, PICKLE_SUFFIXES, link_leading_outside
from engine.protocol import EngineError, ErrorCode, architecture_label
from engine.support import RUNNABLE_ARCHITECTURES, runs_text

#: The text-to-image pipelines this engine builds, one per runnable architecture (what
#: inspection tells registration this engine runs): each module's plain pipeline class.
PIPELINE_ARCH = {
    class_name: name
    for name in RUNNABLE_ARCHITECTURES
    for class_name, variant in _arch.ARCHITECTURES[name].pipeline_classes.items()
    if variant is None
}
#: Edit models' pipelines (FLUX.1 Kontext, Qwen-Image-Edit): their folders load as the plain
#: pipeline's components, and the runtime's ``edit`` builds the edit pipeline when a picture comes.
EDIT_PIPELINE_ARCH = {
    class_name: name
    for name in RUNNABLE_ARCHITECTURES
    for class_name, variant in _arch.ARCHITECTURES[name].pipeline_classes.items()
    if variant is not None and _arch.ARCHITECTURES[name].variant(variant) is not None
    and "edit" in (_arch.ARCHITECTURES[name].variants[variant].capabilities or ())
}
#: The diffusers class that builds each runnable architecture's pipeline.
_PIPELINE_CLASS = {name: class_name for class_name, name in PIPELINE_ARCH.items()}
#: The loader below builds these; another runnable architecture brings its runtime's own.
_SD_RUNTIME = "engine.arch.sd_runtime"
#: Bumped when the folder layout changes; 2: written atomically (v1 folders may be partial).
CONFIG_VERSION = 2


def cache_root() -> Path:
    return Path(os.environ.get("ATELIER_CACHE", Path.home() / ".cache" / "atelier"))


def shipped_config(arch: str) -> Path:
    """The real component configs for ``arch`` as a loadable folder (tokenizers written once).

    Written in a staging folder and renamed into place: the folder is either complete or
    absent, so an engine killed mid-write, or two engines (or test runs) starting at once,
    never leave a half-written folder that every later single-file load would trip on.
    """
    folder = cache_root() / "configs" / f"{arch}-v{CONFIG_VERSION}"
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write_config_folder(staging, arch, shipped_configs(arch))
        staging.rename(folder)
    except OSError:
        if not folder.is_dir():  # not just another writer finishing first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def torch_dtype(name: str) -> Any:
    import torch

    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise EngineError(ErrorCode.INVALID_RECIPE, f"unknown dtype {name!r}; use one of {sorted(dtypes)}")
    return dtypes[name]


def _folder_arch(folder: Path) -> str:
    try:
        index = json.loads((folder / DIFFUSERS_INDEX).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EngineError(
            ErrorCode.CORRUPT_FILE,
            f"'{folder.name}' has no readable model_index.json: point at a diffusers pipeline "
            "folder or a single .safetensors checkpoint",
        ) from exc
    class_name = str(index.get("_class_name", ""))
    if class_name in EDIT_PIPELINE_ARCH:
        return EDIT_PIPELINE_ARCH[class_name]
    if class_name not in PIPELINE_ARCH:
        raise EngineError(
            ErrorCode.ARCH_MISMATCH,
            f"'{folder.name}' is a {class_name or 'unknown'} pipeline; the engine runs {runs_text()} "
            "text-to-image pipelines",
        )
    return PIPELINE_ARCH[class_name]


def _refuse_pickled_folder(folder: Path) -> None:
    """A diffusers folder must carry safetensors weights; a pickle in it is never a fallback."""
    for component in folder.iterdir():
        if not component.is_dir() or component.name.startswith("."):
            continue
        names = [p.name for p in component.iterdir() if p.is_file()]
        weights = [n for n in names if Path(n).suffix.lower() in PICKLE_SUFFIXES | {".safetensors"}]
        if weights and not any(n.endswith(".safetensors") for n in weights):
            raise EngineError(
                ErrorCode.NOT_SAFETENSORS,
                f"'{folder.name}/{component.name}' only has pickled weights ({', '.join(weights)}); "
                "pickles are never loaded: convert the model to safetensors",
            )


def _check_sidecar(sidecar: Path, home: Path) -> None:
    """A checkpoint's config folder must stay beside it and hold no pickles.

    ``from_single_file`` loads any component the checkpoint lacks from the config folder with
    ``from_pretrained``, which would read a ``pytorch_model.bin`` found there (or follow a
    symlink out of the model folder): a crafted checkpoint without text-encoder keys would
    otherwise get a pickle unpickled.
    """
    escape = None if sidecar.resolve().is_relative_to(home) else sidecar
    escape = escape or link_leading_outside(sidecar, home)
    if escape is not None:
        raise EngineError(
            ErrorCode.OUTSIDE_FOLDER,
            f"the config folder '{sidecar.name}' links outside the model folder ('{escape.name}'); "
            "copy the configs in instead of linking them",
        )
    pickles = sorted(p.name for p in sidecar.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise EngineError(
            ErrorCode.NOT_SAFETENSORS,
            f"the config folder '{sidecar.name}' holds pickled files ({', '.join(pickles)}); they "
            "are never loaded: remove them (weights come from the .safetensors checkpoint)",
        )


def single_file_arch(path: Path) -> tuple[str, Path]:
    """(architecture, local config folder) for a single-file checkpoint."""
    arch, sidecar = _file_arch(path)
    return arch, sidecar or shipped_config(arch)


def _file_arch(path: Path) -> tuple[str, Path | None]:
    """(architecture, its config sidecar if it has one) of a single-file checkpoint this
    engine runs; an error naming what it is otherwise."""
    sidecar = config_sidecar(path)
    if (sidecar / DIFFUSERS_INDEX).is_file():
        _check_sidecar(sidecar, Path(path).resolve().parent)
        return _folder_arch(sidecar), sidecar
    from engine.inspect import inspect_file

    info = inspect_file(path)
    if info.kind == "checkpoint" and info.cannot_run:
        raise EngineError(ErrorCode.ARCH_MISMATCH, info.cannot_run)
    if info.kind != "checkpoint" or info.architecture not in RUNNABLE_ARCHITECTURES:
        what = "a LoRA" if info.kind == "lora" else f"a {architecture_label(info.architecture)} file"
        raise EngineError(
            ErrorCode.ARCH_MISMATCH,
            f"'{path.name}' is {what}, not a {runs_text(' or ')} checkpoint; pick a base model file",
        )
    return info.architecture, None


def load_pipeline(path: Path, *, device: str = "cpu", dtype: str = "float32",
                  **runtime_options: Any) -> tuple[Any, str]:
    """Load a text-to-image pipeline with no network and no safety checker; (pipe, arch).

    The architecture comes from the folder's pipeline class or the file's header; one whose
    module names a runtime other than SD's is loaded by that runtime
    (:class:`engine.arch.runtime.Runtime`), with ``runtime_options`` (the model folder, the
    device budget: what a runtime sharing component files or choosing storage needs).
    """
    path = Path(path)
    if path.suffix.lower() not in PICKLE_SUFFIXES and (path.is_dir() or path.suffix.lower() == ".safetensors"):
        arch = _folder_arch(path) if path.is_dir() else _file_arch(path)[0]
        module = _arch.ARCHITECTURES[arch].runtime or _SD_RUNTIME
        if not module.startswith(_SD_RUNTIME):
            return _arch.runtime_of(arch).load(path, device=device, dtype=dtype, **runtime_options), arch
    return load_sd_pipeline(path, device=device, dtype=dtype)


def load_sd_pipeline(path: Path, *, device: str = "cpu", dtype: str = "float32") -> tuple[Any, str]:
    """An SD 1.5 or SDXL pipeline (the SD runtime's loading); (pipe, arch)."""
    import diffusers
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise EngineError(
            ErrorCode.NOT_SAFETENSORS,
            f"'{path.name}' is a pickle ({path.suffix}); only .safetensors are loaded",
        )
    extra: dict[str, Any] = {}
    try:
        if path.is_dir():
            arch = _folder_arch(path)
            _refuse_pickled_folder(path)
            if arch == "sd15":
                extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
            pipe = getattr(diffusers, _PIPELINE_CLASS[arch]).from_pretrained(
                str(path), local_files_only=True, use_safetensors=True, dtype=torch_dtype(dtype), **extra
            )
        elif path.suffix.lower() == ".safetensors":
            arch, config = single_file_arch(path)
            if arch == "sd15":
                extra = {"safety_checker": None, "requires_safety_checker": False}
            pipe = getattr(diffusers, _PIPELINE_CLASS[arch]).from_single_file(
                str(path), config=str(config), local_files_only=True, dtype=torch_dtype(dtype), **extra
            )
        else:
            raise EngineError(
                ErrorCode.NOT_SAFETENSORS,
                f"'{path.name}' is not a .safetensors file or a diffusers folder",
            )
    except EngineError:
        raise
    # SingleFileComponentError: a checkpoint without some component (e.g. no text encoder).
    except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as exc:
        if "out of memory" in str(exc).lower():
            raise EngineError(ErrorCode.OUT_OF_MEMORY, f"out of memory loading '{path.name}': {exc}") from exc
        raise EngineError(
            ErrorCode.CORRUPT_FILE,
            f"could not load '{path.name}' as a model ({type(exc).__name__}: {exc}); is it a complete "
            "SD 1.5 or SDXL checkpoint?",
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return pipe, arch


def load_vae(path: Path, *, like: Any) -> Any:
    """A VAE from one ``.safetensors`` file, built on the config of the model's own VAE.

    Standalone VAEs (e.g. the fp16-fix SDXL VAE) come either in diffusers' key layout or in the
    original ``first_stage_model`` one; diffusers' own converter reads the latter. A file that
    does not fit the model's VAE (another architecture, not a VAE) is refused, not half-loaded.
    """
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise EngineError(ErrorCode.CORRUPT_FILE, f"could not read VAE '{path.name}': {exc}") from exc
    if any(k.startswith("first_stage_model.") for k in state):
        state = {k.removeprefix("first_stage_model."): v for k, v in state.items()
                 if k.startswith("first_stage_model.")}  # fmt: skip
    if any(".down.0." in k or k.startswith("encoder.down.") for k in state):
        state = convert_ldm_vae_checkpoint(state, dict(like.config))
    vae = AutoencoderKL.from_config(like.config)
    try:
        missing, unexpected = vae.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise EngineError(
            ErrorCode.ARCH_MISMATCH,
            f"'{path.name}' does not fit this model's VAE (its tensor shapes differ): pick a VAE "
            "made for the model's architecture",
        ) from exc
    if missing:
        raise EngineError(
            ErrorCode.ARCH_MISMATCH,
            f"'{path.name}' is not a VAE for this model ({len(missing)} of its tensors are "
            f"missing, e.g. '{missing[0]}'); pick a VAE .safetensors file for this architecture",
        )
    del unexpected
    return vae.to(device=like.device, dtype=like.dtype).eval().requires_grad_(False)
