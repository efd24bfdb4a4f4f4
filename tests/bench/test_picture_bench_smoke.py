"""The picture benchmark's whole path on the tiny build, so it cannot rot unseen.

No timing is asserted (a shared CPU) except the bomb refusal's memory: it must never come
near the decoded size, whatever the machine's load.
"""

from __future__ import annotations

import json

import pytest

from tests.bench import picture


def test_tiny_run_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    assert picture.main(["--steps", "4", "--side", "64", "--rounds", "1", "--tiled-side", "64"]) == 0
    report = json.loads(capsys.readouterr().out)  # the whole of stdout is one JSON object
    for name in ("img2img_step_ratio", "upscale_overhead", "tiled_upscale_time_ratio", "input_check_ms", "bomb_refusal_ms"):
        assert report[name] > 0, name
    assert report["bomb_peak_mib"] < 10 < report["bomb_decoded_mib"]
    assert set(report["meets_targets"]) == set(report["targets"])
