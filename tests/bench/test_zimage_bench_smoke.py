"""The Z-Image benchmark's whole path at a tiny width, so it cannot rot unseen.

No timing is asserted (a shared CPU): only that every figure was measured and that the LoRAs
landed on every layer kohya/musubi trains, the fused qkv sliced.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench import zimage


def test_tiny_run_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--heads", "2", "--head-dim", "16", "--rank", "4", "--samples", "2", "--switches", "2", "--refiners", "1",
            "--image-tokens", "16", "--text-tokens", "8", "--out", str(tmp_path)]  # fmt: skip
    assert zimage.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    for name in ("step_ms", "lora_step_ms", "lora_step_ratio", "switch_ms", "prompt_encode_ms_cached"):
        assert report[name] > 0, (name, report[name])
    assert report["step_ms_spread"]["n"] == 2 and set(report["meets_targets"]) == set(report["targets"])
    details = report["details"]
    assert (details["width"], details["layers"], details["refiners"]) == (32, 1, 1)
    # 3 blocks x (qkv -> 3, out, w1, w2, w3) + 2 modulations + embedders and the last layer
    assert details["lora_layers_per_file"] == 3 * 7 + 2 + 6
