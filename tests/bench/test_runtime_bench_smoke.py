"""The runtime benchmark's whole path on the tiny build, so it cannot rot unseen.

No timing is asserted (a shared CPU): only that every figure was measured, is positive, and
that the report says which path each policy job took and why.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench import runtime


def test_tiny_run_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--size", "tiny", "--side", "64", "--steps", "3", "--short-steps", "2", "--long-steps", "4",
            "--rank", "4", "--rounds", "1", "--out", str(tmp_path / "build")]  # fmt: skip
    assert runtime.main(argv) == 0
    report = json.loads(capsys.readouterr().out)  # the whole of stdout is one JSON object
    figures = ("step_ms", "lora_step_ratio", "lora_step_ratio_unfused", "switch_ms_cached",
               "switch_ms_prefetched", "policy_regret_short", "policy_regret_long",
               "model_switch_speedup", "batch_speedup")  # fmt: skip
    assert all(report[name] > 0 for name in figures), {name: report[name] for name in figures}
    assert set(report["meets_targets"]) == set(report["targets"])
    for label in ("short", "long"):
        policy = report["details"]["policy"][label]
        assert policy["chosen"] in ("patched", "unfused")
        assert policy["measured"]["auto"]["reason"].startswith(policy["chosen"])
        assert policy["regret"] >= 1.0
    assert report["details"]["model_cache_source"] == "cached"
    assert report["details"]["batch_timings"]["batch_images"] == 4
