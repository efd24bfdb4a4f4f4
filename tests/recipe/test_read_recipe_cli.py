"""``python -m bot read-recipe FILE... [--json]``."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from bot.recipes import read as read_recipe
from tests.recipe import images


def test_text_and_json_reports(tmp_path: Path) -> None:
    comfy, plain = tmp_path / "fox.png", tmp_path / "plain.png"
    comfy.write_bytes(images.comfy_png())
    plain.write_bytes(images.png())
    out = io.StringIO()
    assert read_recipe.main([str(comfy), str(plain)], out) == 1  # one file had no recipe
    text = out.getvalue()
    assert "format: ComfyUI" in text and "lora: watercolor x 0.6" in text and "no recipe found" in text
    out = io.StringIO()
    assert read_recipe.main(["--json", str(comfy), str(tmp_path / "missing.png")], out) == 2
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["format"] == "ComfyUI" and first["recipe"]["clip_skip"] == 2
    assert [r["name"] for r in first["resources"] if r["kind"] == "lora"] == ["watercolor", "pixel-art"]
    assert "error" in second


def test_the_module_entry_point_never_imports_torch(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(images.jpeg_or_webp(images.CIVITAI_TEXT))
    code = "import runpy, sys; sys.argv = ['bot', 'read-recipe', sys.argv[1]]; import bot.__main__ as m; rc = m.main(sys.argv[1:]); print('torch' in sys.modules, rc)"
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert "format: Civitai" in done.stdout and done.stdout.strip().endswith("False 0"), done.stderr


def test_hashes_say_what_they_are_and_no_empty_file_goes_unexplained(tmp_path: Path) -> None:
    from tests.recipe.test_readers import A1111_TEXT

    a1111, swarm = tmp_path / "a1111.png", tmp_path / "swarm.png"
    a1111.write_bytes(images.png({"parameters": A1111_TEXT}))
    swarm.write_bytes(images.png({"parameters": json.dumps(images.SWARM)}))
    out = io.StringIO()
    assert read_recipe.main([str(a1111), str(swarm)], out) == 0
    text = out.getvalue()
    assert "model: tiny-sd15 (A1111 short hash 6ce0161689)" in text
    assert "lora: watercolor x 0.6 (A1111 short hash 0123456789ab)" in text
    assert f"model: tiny-sdxl (sha256 {'ef' * 32})" in text and "(hash " not in text
    out = io.StringIO()
    read_recipe.main(["--json", str(a1111)], out)
    report = json.loads(out.getvalue())
    model = report["resources"][0]
    assert model["hashes"] == [{"hash": "6ce0161689", "kind": "A1111 short hash (AutoV2: the file's sha256, first 10 hex digits)"}]
    assert '"model": ""' not in out.getvalue() and '"file": ""' not in out.getvalue()
    assert report["recipe"]["model_name"] == "tiny-sd15" and "no files" in report["files"]
