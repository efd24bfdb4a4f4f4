"""The README's main command, played end to end: ``python -m sandbox demo`` in its own process."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from engine.png_metadata import read_png_metadata


def test_the_demo_plays_the_scripted_session_offline(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    result = subprocess.run(
        [sys.executable, "-m", "sandbox", "demo", "--out", str(out), "--steps", "2"],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "torch was imported by the bot process" not in log

    # Nine images, each with its recipe inside: noon and night, the weight strip, the two-LoRA
    # stack, its reroll and its remix, all on the trained demo model.
    pngs = sorted((out / "files").glob("*.png"))
    assert len(pngs) == 9, log
    parameters = [read_png_metadata(p.read_bytes())["parameters"] for p in pngs]
    assert all("Model: tiny-sd15" in text and "Size: 256x256" in text for text in parameters), parameters
    weights = sorted(re.search(r"<lora:sepia:([\d.]+)>", t).group(1) for t in parameters if "<lora:sepia:" in t)  # type: ignore[union-attr]
    assert weights == ["0", "0", "0.3", "0.6", "1", "1", "1"], weights  # strip, stack, reroll, remix
    assert sum("<lora:captain-nova:1>" in t for t in parameters) == 3
    seeds = [re.search(r"Seed: (\d+)", text).group(1) for text in parameters]  # type: ignore[union-attr]
    assert seeds.count("1234") == 2 and seeds.count("99") == 6 and len(set(seeds)) == 3  # the reroll drew a new seed

    # The page teaches: what the bot does first, the member's pictures with their recipes, the
    # remix beside its original, the admin's setup folded at the end.
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.index("Atelier is a Discord bot") < page.index("<img") < page.index("<details>")
    assert page.count("<img") == 10 and page.count("class='recipe'") == 10  # the original shown twice
    assert "A LoRA and its weight" in page and "Two LoRAs at once" in page and "Remix" in page

    # The mismatched LoRA was refused privately, naming both architectures.
    transcript = (out / "transcript.txt").read_text(encoding="utf-8")
    assert "trained for SDXL" in transcript and "is SD 1.5" in transcript
    assert "stopped before this image was made" not in transcript

    # Every job ended before the bot stopped: done, with its post, and its member told so.
    # (Before: the remix stayed 'posting' and its reply said the bot was restarting.)
    with sqlite3.connect(out / "atelier.sqlite3") as db:
        rows = db.execute("SELECT origin, state, result_message_ids, finished_at, told FROM jobs").fetchall()
    assert sorted(row[0] for row in rows) == ["imagine"] * 7 + ["remix", "reroll"], rows
    for origin, state, result_ids, finished_at, told in rows:
        assert state == "done" and len(json.loads(result_ids)) == 1, (origin, state, result_ids)
        assert finished_at is not None and told == 1, (origin, finished_at, told)
    assert "restarting" not in transcript

    # The console shows the refusal as the member reads it: its reasons, no raw markdown.
    refusal = result.stdout[result.stdout.index("refused, privately"):]
    assert "was trained for SDXL, but the model tiny-sd15 is SD 1.5" in refusal
    assert "Pick a LoRA made for SD 1.5" in refusal
    assert "**" not in refusal and "`" not in refusal
