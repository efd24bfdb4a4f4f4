"""Textual-inversion embeddings through the Discord double: /lora add refuses one and points
at /embedding add, an admin registers it, a member writes its name in the negative prompt and
the posted PNG's A1111 text carries it in ``TI hashes`` (as A1111 writes it)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tests.bot.conftest import World, png_parameters
from tests.bot.test_imagine_flow import imagine_and_wait


def _write_sd15_embedding(folder: Path, name: str, vectors: int = 2) -> Path:
    """A1111's SD 1.5 embedding file: ``emb_params`` (vectors x the text encoder's width, 32 in
    the tiny model), with the metadata A1111's trainer writes beside it."""
    path = folder / f"{name}.safetensors"
    generator = torch.Generator().manual_seed(5)
    tensor = torch.randn(vectors, 32, generator=generator).to(torch.float32)
    save_file({"emb_params": tensor}, str(path), metadata={"format": "pt"})
    return path


async def test_an_embedding_is_refused_by_lora_add_then_registered_and_used_by_name(
    world: World, demo_assets: Any
) -> None:
    path = _write_sd15_embedding(demo_assets.lora_root, "tiny-negative")
    try:
        handle = await world.double.slash(
            world.admin, world.channel, "lora", {"file": path.name}, subcommand="add"
        )
        refusal = (await handle.wait_followup(within=30)).content
        assert "embedding" in refusal and "/embedding add" in refusal
        assert await world.registry.loras.get(world.guild.id, "tiny-negative") is None

        # Members cannot register one.
        handle = await world.double.slash(
            world.alice, world.channel, "embedding", {"file": path.name}, subcommand="add"
        )
        await handle.wait_response(3)
        assert "Manage Server" in handle.response_payloads[-1]["data"]["content"]

        handle = await world.double.slash(
            world.admin, world.channel, "embedding", {"file": path.name}, subcommand="add"
        )
        registered = (await handle.wait_followup(within=30)).content
        assert "Registered **tiny-negative**" in registered and "SD 1.5" in registered

        result = await imagine_and_wait(
            world, world.alice, {"prompt": "a lighthouse", "negative": "tiny-negative, blurry", "seed": 3}
        )
        parameters = png_parameters(result.attachments[0].data)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        # A1111 quotes a value holding ':' (reference.md): TI hashes: "name: 12 hex".
        assert f'TI hashes: "tiny-negative: {sha[:12]}"' in parameters
        assert "Negative prompt: tiny-negative, blurry" in parameters
        assert world.double.violations == []
    finally:
        path.unlink()
