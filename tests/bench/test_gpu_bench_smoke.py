"""The GPU benchmark's whole path, on the CPU with the tiny build, so it cannot rot unseen.

No timing is asserted: only that every mode produced images in a measured, positive time and
that the report holds what a GPU session needs to read off (modes, ratios, sizes, memory).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench import gpu

MODES = {"raw", "engine", "raw_lora", "engine_lora"}


def test_tiny_cpu_run_reports_every_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--device", "cpu", "--dtype", "float32", "--size", "tiny", "--arch", "sd15",
            "--steps", "2", "--images", "1", "--out", str(tmp_path), "--runtime-steps", "2", "--runtime-side", "64",
            "--short-steps", "2", "--long-steps", "3", "--rank", "4", "--rounds", "1"]  # fmt: skip
    assert gpu.main(argv) == 0
    report = json.loads(capsys.readouterr().out)  # the whole of stdout is one JSON object

    assert (report["device"], report["dtype"], report["steps"], report["images"]) == ("cpu", "float32", 2, 1)
    assert set(report["architectures"]) == {"sd15"}
    sd15 = report["architectures"]["sd15"]
    assert sd15["resolution"] == "256x256"
    assert [lo["file"] for lo in sd15["loras"]] == [
        "sd15/watercolor.safetensors", "sd15/pixel-art.safetensors", "sd15/captain-nova.safetensors"
    ]  # fmt: skip

    per_second = sd15["images_per_s"]
    assert set(per_second) == MODES
    assert all(per_second[mode] > 0 for mode in MODES), per_second
    ratios = sd15["ratio_engine_over_raw"]
    assert ratios["no_lora"] > 0 and ratios["lora_stack"] > 0
    assert ratios["no_lora"] == pytest.approx(per_second["engine"] / per_second["raw"], rel=1e-2)
    assert ratios["lora_stack"] == pytest.approx(per_second["engine_lora"] / per_second["raw_lora"], rel=1e-2)

    # The benchmark itself refuses to report if the timed LoRA jobs read files (cache misses).
    assert sd15["engine_timings_s"]["engine_lora"]["denoise"] > 0
    assert sd15["peak_gpu_memory_gib"] == {"raw": None, "engine": None}
    assert sd15["raw_lora_load_s"] > 0 and sd15["engine_first_lora_job_s"] > 0
    assert sd15["build_reused"] is False
    runtime = sd15["runtime"]  # the runtime figures at this size, as tests.bench.runtime measures them
    assert runtime["size"] == "64x64" and runtime["lora_step_ratio"] > 0
    assert runtime["policy_regret_short"] >= 1.0 and runtime["policy_regret_long"] >= 1.0
    assert set(runtime["meets_targets"]) == set(runtime["targets"])
    assert (tmp_path / "sd15-tiny" / "models" / sd15["model"]).is_file()


def test_tiny_cpu_flux_run_reports_every_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """FLUX.1 dev against raw FluxPipeline on fused weights, at the tiny build's size."""
    argv = ["--device", "cpu", "--dtype", "float32", "--size", "tiny", "--arch", "flux", "--flux-steps", "2",
            "--images", "1", "--out", str(tmp_path), "--flux-rank", "4"]  # fmt: skip
    assert gpu.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    flux = report["architectures"]["flux"]
    assert (flux["resolution"], flux["steps"], flux["guidance"]) == ("256x256", 2, 3.5)
    assert set(flux["images_per_s"]) == MODES and all(v > 0 for v in flux["images_per_s"].values())
    assert flux["ratio_engine_over_raw"]["no_lora"] > 0 and flux["ratio_engine_over_raw"]["lora_stack"] > 0
    assert flux["engine_timings_s"]["engine_lora"]["denoise"] > 0
    assert flux["raw_lora_load_s"] > 0 and [lo["weight"] for lo in flux["loras"]] == [0.8, 0.6]
