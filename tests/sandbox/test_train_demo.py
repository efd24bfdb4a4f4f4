"""The pieces ``python -m sandbox train-demo`` is made of, checked fast on a CPU.

The training itself runs on a GPU and never in the tests; what it rests on is checked here: the
scene set is seeded and its captions say what is drawn, the measures tell the styles apart, and
the SVD extraction writes a kohya file whose ΔW the engine's own LoRA reader reads back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sandbox.train_demo import measures, scenes


def test_the_scene_set_is_seeded_and_captioned() -> None:
    first, captions = scenes.make_set(6, seed=3)
    again, captions_again = scenes.make_set(6, seed=3)
    other, _ = scenes.make_set(6, seed=4)
    assert np.array_equal(first, again) and captions == captions_again
    assert not np.array_equal(first, other)
    assert first.shape == (6, scenes.SIZE, scenes.SIZE, 3)
    for caption in captions:
        assert any(word in caption for words in scenes.TIME_WORDS.values() for word in words), caption
        assert any(o in caption for o in scenes.OBJECTS), caption


def test_the_measures_tell_the_sets_apart() -> None:
    base, base_captions = scenes.make_set(24, seed=1)
    pixel, _ = scenes.make_set(8, seed=1, style="pixel")
    sepia, _ = scenes.make_set(8, seed=1, style="sepia")
    nova, nova_captions = scenes.make_set(8, seed=1, style="nova")
    assert min(measures.blockiness(i) for i in pixel) > 0.99
    assert max(measures.blockiness(i) for i in base) < 0.4
    assert max(measures.sepia_distance(i) for i in sepia) < 3 < min(measures.sepia_distance(i) for i in base)
    assert min(measures.suit_share(i) for i in nova) > 0.08 > max(measures.suit_share(i) for i in base)
    assert all(c.startswith("captain nova, ") for c in nova_captions)
    night = [measures.sky_luma(i) for i, c in zip(base, base_captions, strict=True) if "night" in c]
    noon = [measures.sky_luma(i) for i, c in zip(base, base_captions, strict=True) if "noon" in c or "day" in c]
    assert night and noon and max(night) + 60 < min(noon)


def test_an_extracted_lora_reads_back_as_the_weight_difference(tmp_path: Path) -> None:
    import torch

    from engine.loras.reader import read_lora_file
    from sandbox.train_demo.train import extract_lora, save_lora

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.Conv2d(8, 16, 3))
    tuned = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.Conv2d(8, 16, 3))
    tuned.load_state_dict(base.state_dict())
    with torch.no_grad():  # differences of rank 3: a rank-4 extraction keeps all of them
        tuned[0].weight += torch.randn(32, 3) @ torch.randn(3, 24)
        tuned[1].weight += (torch.randn(16, 3) @ torch.randn(3, 8 * 9)).reshape(16, 8, 3, 3)
    state, stats = extract_lora({"unet": base}, {"unet": tuned}, rank=4, conv_rank=4)
    assert stats == {"layers": 2, "energy_kept": 1.0}
    path = tmp_path / "extracted.safetensors"
    save_lora(state, path, {"ss_network_module": "networks.lora"})
    lora = read_lora_file(path, label="extracted", sha256="")
    assert lora.layout == "kohya" and sorted(lora.formats) == ["locon", "lora"]
    for index in (0, 1):
        delta = lora.layers[("unet", str(index))].dense(base[index].weight)
        expected = tuned[index].weight - base[index].weight
        # fp16 storage: a few parts in a thousand of the difference's size.
        assert float((delta - expected).abs().max()) < 5e-3 * float(expected.abs().max())
