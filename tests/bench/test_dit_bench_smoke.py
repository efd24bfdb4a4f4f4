"""The DiT benchmark's whole path at a tiny width for each architecture, so it cannot rot unseen.

No timing is asserted (a shared CPU): only that every figure was measured and that the LoRAs
landed on every layer their trainers train, fused layers sliced.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench import dit, zimage

TINY = ["--heads", "2", "--head-dim", "16", "--rank", "4", "--samples", "2", "--switches", "2",
        "--image-tokens", "16", "--text-tokens", "8"]  # fmt: skip


def _report(capsys: pytest.CaptureFixture[str]) -> dict:
    report = json.loads(capsys.readouterr().out)
    for name in ("step_ms", "lora_step_ms", "lora_step_ratio", "switch_ms", "prompt_encode_ms_cached"):
        assert report[name] > 0, (name, report[name])
    assert report["step_ms_spread"]["n"] == 2 and set(report["meets_targets"]) == set(report["targets"])
    return report


def test_zimage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert zimage.main([*TINY, "--refiners", "1", "--out", str(tmp_path)]) == 0
    details = _report(capsys)["details"]
    assert (details["width"], details["layers"], details["refiners"]) == (32, 1, 1)
    # 3 blocks x (qkv -> 3, out, w1, w2, w3) + 2 modulations + embedders and the last layer
    assert details["lora_layers_per_file"] == 3 * 7 + 2 + 6


# Qwen-Image: one block's 14 linears (mods, q/k/v and their text twins, outs, both MLPs). Klein: a
# double block's 12 (two qkv -> 3 each, projections, MLPs), a single block's 2, and 9 outside.
@pytest.mark.parametrize(("arch", "layers"), [("qwen_image", 14), ("flux2", 12 + 2 + 9)])
def test_qwen_image_and_klein(tmp_path: Path, capsys: pytest.CaptureFixture[str], arch: str, layers: int) -> None:
    assert dit.main(["--arch", arch, *TINY, "--out", str(tmp_path)]) == 0
    report = _report(capsys)
    assert report["arch"] == arch and report["details"]["width"] == 32
    assert report["details"]["lora_layers_per_file"] == layers
