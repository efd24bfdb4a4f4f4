"""The PNG chunks the engine writes (the text itself is tested in tests/recipe)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image

from engine.png_metadata import read_png_metadata, write_png
from engine.protocol import LoraRef, Recipe
from engine.recipe.a1111 import write_parameters

RECIPE = Recipe(
    model="checkpoints/dreamy.safetensors",
    prompt="a cat, oil painting",
    negative_prompt="lowres, watermark",
    loras=(LoraRef("styles/oil.safetensors", 0.8, name="oil", a1111_hash="0123456789ab"),),
    seed=1234,
)


def test_png_chunks_round_trip_and_are_deterministic() -> None:
    image = Image.new("RGB", (16, 16), (10, 200, 30))
    text = write_parameters(RECIPE)
    png = write_png(image, text, RECIPE.to_json())
    assert png == write_png(image, text, RECIPE.to_json())
    meta = read_png_metadata(png)
    assert meta["parameters"] == text
    assert Recipe.from_json(meta["recipe"]) == RECIPE


def test_png_without_our_chunks() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    assert read_png_metadata(buffer.getvalue()) == {"parameters": None, "recipe": None}


def test_a_lycoris_files_lora_hash_in_the_png_is_the_one_civitai_computes(demo_assets, tmp_path: Path) -> None:
    """LyCORIS writes ``sshs_model_hash`` as "0x" + a hash of other bytes; the PNG's ``Lora
    hashes`` must carry the file's own tensor hash (sha256 after the header, 12 hex), which is
    what Civitai computes and what our remix matching looks up, not a slice of that field."""
    from lycoris.utils import precalculate_safetensors_hashes
    from safetensors.torch import load_file, save_file

    from engine.generate import Generator

    # A network's state_dict comes in module order; safetensors writes tensors sorted by name,
    # so LyCORIS (which hashes tensor by tensor in state_dict order) hashes other bytes.
    state = dict(reversed(load_file(str(demo_assets.lora_root / "sd15/watercolor.safetensors")).items()))
    claimed = precalculate_safetensors_hashes(state)  # as lycoris/kohya.py's save_weights does
    (tmp_path / "sd15").mkdir()
    path = tmp_path / "sd15/lyco.safetensors"
    save_file(state, str(path), {"sshs_model_hash": claimed})
    data = path.read_bytes()
    computed = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()[:12]
    assert claimed.removeprefix("0x")[:12] != computed

    generator = Generator(demo_assets.model_root, tmp_path)
    recipe = Recipe(model="sd15-tiny.safetensors", prompt="a fox", steps=1, width=64, height=64, seed=1,
                    loras=(LoraRef("sd15/lyco.safetensors", 0.8, name="lyco"),))  # fmt: skip
    meta = read_png_metadata(generator.run(recipe).images[0])
    assert f'Lora hashes: "lyco: {computed}"' in meta["parameters"]
    assert Recipe.from_json(meta["recipe"]).loras[0].a1111_hash == computed
