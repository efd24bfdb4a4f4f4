"""The tiny FLUX.1 build shared by the FLUX test files (imported as a fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.flux_builder import FluxBuild, build_flux


@pytest.fixture(scope="session")
def flux_build(tmp_path_factory: pytest.TempPathFactory) -> FluxBuild:
    """dev, bf16, every layout (a few seconds)."""
    return build_flux(Path(tmp_path_factory.mktemp("flux-dev")), "dev", seed=1)


@pytest.fixture(scope="session")
def flux_pipe(flux_build: FluxBuild):
    """The dev pipeline loaded from the diffusers folder, float32 (exact LoRA arithmetic)."""
    import torch

    from engine.arch.flux.loading import load_folder

    return load_folder(flux_build.folder, dtype=torch.float32)
