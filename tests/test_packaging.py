"""A non-editable install carries everything: the wheel holds every module and every data file,
and code run from the wheel alone (no checkout beside it) finds its schema, configs and vocabulary.

The wheel is built the way ``pip install .`` builds it (setuptools, offline: no build isolation),
from a copy of the tree so nothing is written into the checkout. About 5 s, most of it pip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from engine.shipped_data import DATA_PACKAGE, data_dir

ROOT = Path(__file__).resolve().parents[1]
#: "a castle" in CLIP's ids (the vocabulary read from the wheel gives the real ones).
CASTLE = [320, 3540]

#: What runs from the unpacked wheel: each of the three readers of data/, and where it read from.
_PROBE = """
import json, sys
import bot.registry.migrations as migrations
import engine.component_configs as configs
import engine.tokenizer as tokenizer
from engine.shipped_data import data_dir
print(json.dumps({
    "bot": migrations.__file__,
    "data": str(data_dir()),
    "schema": str(migrations.SCHEMA_DIR),
    "migrations": [m.name for m in migrations.load_migrations()],
    "configs": str(configs.CONFIG_ROOT),
    "sdxl_unet": configs.read_config("sdxl", "unet")["_class_name"],
    "bpe": str(tokenizer.BPE_FILE),
    "castle": tokenizer.clip_bpe().encode("a castle"),
    "torch": "torch" in sys.modules,
}))
"""


def _source_files(folder: Path) -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("bot", "engine", "data", "sandbox"):  # the sandbox too: the wheel must leave it out
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "PYTHONPATH": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
         "--no-cache-dir", "-q", "-w", str(out)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = out.glob("atelier-*.whl")
    return found


def test_the_wheel_holds_every_module_and_every_data_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {name for name in _source_files(ROOT / "bot") | _source_files(ROOT / "engine") if name.endswith(".py")}
    missing = sorted(modules - names)
    assert not missing, f"not in the wheel (add its package to [tool.setuptools] packages): {missing}"
    shipped = {f"{DATA_PACKAGE}/{name.removeprefix('data/')}" for name in _source_files(ROOT / "data")}
    missing = sorted(shipped - names)
    assert not missing, f"data files not in the wheel (see [tool.setuptools.package-data]): {missing}"
    assert f"{DATA_PACKAGE}/clip/LICENSE.open_clip" in names  # the vocabulary's licence travels with it
    # The Discord double, the model builder and the demo stay in the checkout: never in the wheel.
    assert not [name for name in names if name.startswith(("sandbox/", "tests/"))]


def test_code_run_from_the_wheel_alone_finds_its_data_there(wheel: Path, tmp_path: Path) -> None:
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    run = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert Path(seen["bot"]).is_relative_to(unpacked)  # the wheel's code, not the checkout's
    assert Path(seen["data"]) == unpacked / DATA_PACKAGE
    for key in ("schema", "configs", "bpe"):
        assert Path(seen[key]).is_relative_to(unpacked / DATA_PACKAGE), key
    assert seen["migrations"] == sorted(path.stem for path in (ROOT / "data" / "schema").glob("*.sql"))
    assert seen["sdxl_unet"] == "UNet2DConditionModel" and seen["castle"] == CASTLE
    assert seen["torch"] is False


def test_a_checkout_reads_the_data_beside_its_code() -> None:
    assert data_dir() == ROOT / "data"
