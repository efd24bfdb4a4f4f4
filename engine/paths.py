"""Confining every file the engine touches to the folders its operator configured.

Recipes and API calls name files with paths relative to the model or LoRA folder. A path
from outside is untrusted: it may be absolute, climb out with ``..``, or name a symlink that
points elsewhere on the disk. Everything is resolved here, once, before anything opens it.
It is also the first line of the "never unpickle" rule: pickled formats are refused by name
before any code could be tempted to load them.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from engine.protocol import EngineError, ErrorCode, FileEntry

#: Formats that are Python pickles (or may be): loading one can run arbitrary code.
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})
SAFETENSORS_SUFFIX = ".safetensors"
#: A diffusers pipeline folder is recognised by this file.
DIFFUSERS_INDEX = "model_index.json"


def _refuse_pickle(name: str) -> None:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise EngineError(
            ErrorCode.NOT_SAFETENSORS,
            f"'{name}' is a {suffix} file: pickled formats are never unpickled because loading "
            "them can run arbitrary code; convert it to .safetensors first.",
        )


def resolve_within(root: Path, relative: str, *, allow_dir: bool = False) -> Path:
    """Turn a caller's relative path into a real path that is guaranteed to lie under ``root``.

    Symlinks are followed before the containment check, so a link inside the folder that
    points outside it is refused like a ``..`` path. ``allow_dir`` admits folders (a diffusers
    pipeline folder is a model); otherwise only ``.safetensors`` files are returned.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise EngineError(ErrorCode.UNKNOWN_FILE, "no file name was given")
    if "\x00" in relative:
        raise EngineError(ErrorCode.UNKNOWN_FILE, "the file name contains a NUL byte")
    try:
        real_root = Path(root).resolve(strict=True)
    except OSError as exc:
        raise EngineError(
            ErrorCode.UNKNOWN_FILE,
            f"the configured folder '{root}' does not exist; check the engine's --models/--loras",
        ) from exc
    posix = PurePosixPath(relative.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(relative).drive or ".." in posix.parts:
        raise EngineError(
            ErrorCode.OUTSIDE_FOLDER,
            f"'{relative}' points outside the allowed folder; give a path relative to "
            f"'{real_root}' without '..'",
        )
    if not posix.parts:  # "." or "./": the folder itself is never a model or a LoRA
        raise EngineError(ErrorCode.UNKNOWN_FILE, f"'{relative}' names no file inside the folder")
    _refuse_pickle(relative)
    candidate = real_root.joinpath(*posix.parts).resolve(strict=False)
    if not candidate.is_relative_to(real_root):
        raise EngineError(
            ErrorCode.OUTSIDE_FOLDER,
            f"'{relative}' resolves (through a symlink) to a place outside the allowed folder "
            f"'{real_root}'; only files inside it can be used",
        )
    _refuse_pickle(candidate.name)
    if not candidate.exists():
        raise EngineError(
            ErrorCode.UNKNOWN_FILE,
            f"'{relative}' does not exist in '{real_root}'; list the available files with "
            "GET /files",
        )
    if candidate.is_dir():
        if not allow_dir:
            raise EngineError(ErrorCode.UNKNOWN_FILE, f"'{relative}' is a folder, not a file")
        escape = link_leading_outside(candidate, real_root)
        if escape is not None:
            raise EngineError(
                ErrorCode.OUTSIDE_FOLDER,
                f"'{relative}' contains '{escape.relative_to(candidate).as_posix()}', a symlink "
                f"to a place outside the allowed folder '{real_root}'; loading the folder would "
                "read it, so copy the file in instead of linking it",
            )
        return candidate
    if candidate.suffix.lower() != SAFETENSORS_SUFFIX:
        raise EngineError(
            ErrorCode.NOT_SAFETENSORS,
            f"'{relative}' is not a .safetensors file; only safetensors are loaded (pickles "
            "are never unpickled; convert to .safetensors)",
        )
    return candidate


def resolve_new_file(root: Path, relative: str) -> Path:
    """Where a file that does not exist yet may be written under ``root`` (a download).

    The same rules as :func:`resolve_within` (relative, no ``..``, no symlink out, never a
    pickle suffix, only ``.safetensors``), except that the file and its folders may be missing.
    """
    if not isinstance(relative, str) or not relative.strip() or "\x00" in relative:
        raise EngineError(ErrorCode.OUTSIDE_FOLDER, "the destination must be a file name inside the folder")
    try:
        real_root = Path(root).resolve(strict=True)
    except OSError as exc:
        raise EngineError(ErrorCode.UNKNOWN_FILE, f"the configured folder '{root}' does not exist") from exc
    posix = PurePosixPath(relative.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(relative).drive or ".." in posix.parts or not posix.parts:
        raise EngineError(
            ErrorCode.OUTSIDE_FOLDER,
            f"'{relative}' points outside the LoRA folder; give a path relative to it without '..'",
        )
    if any(part.startswith(".") for part in posix.parts):
        raise EngineError(ErrorCode.OUTSIDE_FOLDER, f"'{relative}' names a hidden file or folder")
    _refuse_pickle(relative)
    if posix.suffix.lower() != SAFETENSORS_SUFFIX:
        raise EngineError(ErrorCode.NOT_SAFETENSORS, f"'{relative}' is not a .safetensors file name")
    candidate = real_root.joinpath(*posix.parts).resolve(strict=False)
    if not candidate.is_relative_to(real_root):
        raise EngineError(
            ErrorCode.OUTSIDE_FOLDER,
            f"'{relative}' resolves (through a symlink) outside the folder '{real_root}'",
        )
    return candidate


def link_leading_outside(folder: Path, real_root: Path) -> Path | None:
    """The first entry under ``folder`` that resolves outside ``real_root``, or None.

    A diffusers pipeline folder is loaded component by component, following any symlink in it,
    so confining the folder's own path is not enough: every file and subfolder must stay
    inside, including what lies behind a link to another folder inside the root.
    """
    seen: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real_dir = Path(dirpath).resolve()
        if real_dir in seen:  # a link back to a folder already checked (or a cycle)
            dirnames.clear()
            continue
        seen.add(real_dir)
        for name in (*dirnames, *filenames):
            entry = Path(dirpath, name)
            # Checked before os.walk descends, so the walk itself never leaves the root.
            if not entry.resolve(strict=False).is_relative_to(real_root):
                return entry
    return None


def list_files(root: Path, *, include_pipeline_folders: bool = False) -> list[FileEntry]:
    """Every usable file under ``root``, relative to it, in a stable order.

    Symlinks that lead outside the folder are left out rather than reported, because using
    them would be refused anyway. Pipeline folders (``model_index.json``) count as one entry
    whose size is the sum of their files.
    """
    try:
        real_root = Path(root).resolve(strict=True)
    except OSError:
        return []
    entries: list[FileEntry] = []
    for dirpath, dirnames, filenames in os.walk(real_root, followlinks=False):
        here = Path(dirpath)
        if include_pipeline_folders and DIFFUSERS_INDEX in filenames and here != real_root:
            dirnames.clear()
            if link_leading_outside(here, real_root) is not None:
                continue  # refused when used, so not offered
            size = sum(p.stat().st_size for p in here.rglob("*") if p.is_file())
            entries.append(FileEntry(here.relative_to(real_root).as_posix(), size))
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.lower().endswith(SAFETENSORS_SUFFIX):
                continue
            path = here / name
            try:
                target = path.resolve(strict=True)
            except OSError:
                continue
            if not target.is_relative_to(real_root) or not target.is_file():
                continue
            entries.append(FileEntry(path.relative_to(real_root).as_posix(), target.stat().st_size))
    entries.sort(key=lambda entry: entry.path)
    return entries
