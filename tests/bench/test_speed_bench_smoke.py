"""The speed benchmark's whole path on the tiny build, so it cannot rot unseen.

No timing is asserted (a shared CPU): only that every figure was measured on the recipes the
bot makes (the profile detected from the LoRA's file name, and merged by validation).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench import speed


def test_tiny_run_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--size", "tiny", "--side", "256", "--default-steps", "6", "--rank", "4", "--rounds", "1",
            "--calls", "20", "--out", str(tmp_path / "build")]  # fmt: skip
    assert speed.main(argv) == 0
    report = json.loads(capsys.readouterr().out)  # the whole of stdout is one JSON object
    assert report["fast_profile_ratio"] > 0 and report["profile_overhead_ms"] > 0
    assert set(report["meets_targets"]) == set(report["targets"])
    details = report["details"]
    assert details["profile"] == "lcm-sd15"
    assert details["profile_recipe"] == "LCM, 4 steps, CFG 1, lcm x 1"
    assert details["default_recipe"] == "DPM++ 2M Karras, 6 steps, CFG 7"
