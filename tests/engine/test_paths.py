"""Folder confinement: every way out of the configured folders is closed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from engine.paths import list_files, resolve_within
from engine.protocol import EngineError, ErrorCode


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "loras"
    (root / "style").mkdir(parents=True)
    save_file({"w": np.zeros(2, np.float32)}, str(root / "style" / "ink.safetensors"))
    outside = tmp_path / "secret"
    outside.mkdir()
    save_file({"w": np.zeros(2, np.float32)}, str(outside / "private.safetensors"))
    return root, outside


def _code(root: Path, relative: str, **kwargs: bool) -> ErrorCode:
    with pytest.raises(EngineError) as caught:
        resolve_within(root, relative, **kwargs)
    return caught.value.code


def test_a_file_inside_resolves_to_its_real_path(folders: tuple[Path, Path]) -> None:
    root, _ = folders
    assert (
        resolve_within(root, "style/ink.safetensors") == (root / "style/ink.safetensors").resolve()
    )


def test_dot_dot_is_refused_even_when_it_would_come_back_inside(folders: tuple[Path, Path]) -> None:
    root, _ = folders
    assert _code(root, "../secret/private.safetensors") is ErrorCode.OUTSIDE_FOLDER
    assert _code(root, "style/../style/ink.safetensors") is ErrorCode.OUTSIDE_FOLDER
    assert _code(root, "style\\..\\..\\secret\\private.safetensors") is ErrorCode.OUTSIDE_FOLDER


def test_absolute_paths_are_refused_and_the_message_names_the_allowed_folder(
    folders: tuple[Path, Path],
) -> None:
    root, outside = folders
    with pytest.raises(EngineError) as caught:
        resolve_within(root, str(outside / "private.safetensors"))
    assert caught.value.code is ErrorCode.OUTSIDE_FOLDER
    assert str(root.resolve()) in caught.value.message
    assert _code(root, "C:\\models\\x.safetensors") is ErrorCode.OUTSIDE_FOLDER


def test_a_symlink_pointing_outside_is_refused(folders: tuple[Path, Path]) -> None:
    root, outside = folders
    os.symlink(outside / "private.safetensors", root / "link.safetensors")
    os.symlink(outside, root / "linkdir")
    assert _code(root, "link.safetensors") is ErrorCode.OUTSIDE_FOLDER
    assert _code(root, "linkdir/private.safetensors") is ErrorCode.OUTSIDE_FOLDER


def test_a_symlink_that_stays_inside_is_allowed(folders: tuple[Path, Path]) -> None:
    root, _ = folders
    os.symlink(root / "style" / "ink.safetensors", root / "alias.safetensors")
    assert resolve_within(root, "alias.safetensors") == (root / "style/ink.safetensors").resolve()


@pytest.mark.parametrize(
    "name", ["model.ckpt", "model.pt", "model.pth", "pytorch_model.bin", "x.pkl"]
)
def test_pickled_formats_are_refused_by_name_even_if_present(
    folders: tuple[Path, Path], name: str
) -> None:
    root, _ = folders
    (root / name).write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(EngineError) as caught:
        resolve_within(root, name)
    assert caught.value.code is ErrorCode.NOT_SAFETENSORS
    assert "never unpickled" in caught.value.message


def test_a_symlink_with_a_safe_name_to_a_pickle_is_refused(folders: tuple[Path, Path]) -> None:
    root, _ = folders
    (root / "real.ckpt").write_bytes(b"\x80\x04")
    os.symlink(root / "real.ckpt", root / "innocent.safetensors")
    assert _code(root, "innocent.safetensors") is ErrorCode.NOT_SAFETENSORS


def test_missing_files_other_formats_and_folders(folders: tuple[Path, Path]) -> None:
    root, _ = folders
    assert _code(root, "nope.safetensors") is ErrorCode.UNKNOWN_FILE
    assert _code(root, "") is ErrorCode.UNKNOWN_FILE
    assert _code(root, ".", allow_dir=True) is ErrorCode.UNKNOWN_FILE  # the root itself
    assert _code(root, "./", allow_dir=True) is ErrorCode.UNKNOWN_FILE
    (root / "notes.gguf").write_bytes(b"GGUF")
    assert _code(root, "notes.gguf") is ErrorCode.NOT_SAFETENSORS
    assert _code(root, "style") is ErrorCode.UNKNOWN_FILE
    assert resolve_within(root, "style", allow_dir=True) == (root / "style").resolve()


def test_a_missing_configured_folder_is_reported(tmp_path: Path) -> None:
    assert _code(tmp_path / "absent", "x.safetensors") is ErrorCode.UNKNOWN_FILE


def test_listing_shows_only_usable_files_inside(folders: tuple[Path, Path]) -> None:
    root, outside = folders
    os.symlink(outside / "private.safetensors", root / "escape.safetensors")
    (root / "old.ckpt").write_bytes(b"\x80\x04")
    pipeline = root / "xl-model"
    (pipeline / "unet").mkdir(parents=True)
    (pipeline / "model_index.json").write_text("{}")
    save_file({"w": np.zeros(4, np.float32)}, str(pipeline / "unet" / "w.safetensors"))
    plain = [e.path for e in list_files(root)]
    assert plain == ["style/ink.safetensors", "xl-model/unet/w.safetensors"]
    with_folders = {e.path: e.size_bytes for e in list_files(root, include_pipeline_folders=True)}
    assert set(with_folders) == {"style/ink.safetensors", "xl-model"}
    expected = sum(p.stat().st_size for p in pipeline.rglob("*") if p.is_file())
    assert with_folders["xl-model"] == expected


def _pipeline_folder(root: Path, name: str) -> Path:
    folder = root / name
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    save_file({"w": np.zeros(4, np.float32)}, str(folder / "unet" / "w.safetensors"))
    return folder


@pytest.mark.parametrize("link", ["file", "folder", "folder-behind-inside-link"])
def test_a_pipeline_folder_holding_a_link_to_outside_weights_is_refused(
    folders: tuple[Path, Path], link: str
) -> None:
    root, outside = folders
    folder = _pipeline_folder(root, "sneaky")
    if link == "file":
        os.symlink(outside / "private.safetensors", folder / "unet" / "extra.safetensors")
    elif link == "folder":
        os.symlink(outside, folder / "text_encoder")
    else:  # an inside link whose target folder links out: the walk must look behind it
        other = _pipeline_folder(root, "other")
        os.symlink(outside, other / "vae")
        os.symlink(other, folder / "shared")
    with pytest.raises(EngineError) as caught:
        resolve_within(root, "sneaky", allow_dir=True)
    assert caught.value.code is ErrorCode.OUTSIDE_FOLDER
    assert "symlink" in caught.value.message
    assert "sneaky" not in {e.path for e in list_files(root, include_pipeline_folders=True)}


def test_a_pipeline_folder_with_links_inside_the_root_or_a_cycle_is_allowed(
    folders: tuple[Path, Path],
) -> None:
    root, _ = folders
    folder = _pipeline_folder(root, "linked")
    os.symlink(root / "style" / "ink.safetensors", folder / "unet" / "alias.safetensors")
    os.symlink(folder, folder / "unet" / "loop")  # a cycle must not hang the check
    assert resolve_within(root, "linked", allow_dir=True) == folder.resolve()
    assert "linked" in {e.path for e in list_files(root, include_pipeline_folders=True)}
