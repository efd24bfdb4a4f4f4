""" "Did you mean": the trigram index finds the intended name among thousands."""

from __future__ import annotations

import random

import pytest

from bot.registry import LoraEntry, ModelEntry, RegistryError
from bot.registry.catalog import NameIndex
from engine.protocol import FileInfo

WORDS = (
    "neon cyber retro dark soft sharp vivid pastel gothic epic tiny giant ancient future city "
    "style portrait armor dress forest castle robot knight dragon anime film grain detail light"
).split()


def typo(rng: random.Random, name: str) -> str:
    i = rng.randrange(1, len(name) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        return name[:i] + name[i + 1 :]  # a letter missing
    if kind == 1:
        return name[:i] + "q" + name[i + 1 :]  # a wrong letter
    return name[: i - 1] + name[i] + name[i - 1] + name[i + 1 :]  # two letters swapped


def test_typos_find_the_intended_name_among_3000() -> None:
    rng = random.Random(7)
    names = [
        f"{rng.choice(WORDS)} {rng.choice(WORDS)} {rng.choice(WORDS)} {i}" for i in range(3000)
    ]
    index = NameIndex((n, n) for n in names)
    trials = [rng.choice(names) for _ in range(200)]
    hits = sum(name in index.suggest(typo(rng, name)) for name in trials)
    assert hits / len(trials) >= 0.95


def test_suggestions_are_distinct_and_limited() -> None:
    index = NameIndex(
        [("alpha", "A"), ("alpha one", "A"), ("alpha two", "B"), ("alphabet", "C"), ("beta", "D")]
    )
    three = index.suggest("alpah", limit=3)
    assert three[0] == "A" and len(three) == len(set(three)) == 3 and "D" not in three
    two = index.suggest("alpha", limit=2)
    assert two[0] == "A" and len(two) == 2
    assert index.suggest("") == [] and NameIndex([]).suggest("x") == []


def test_prefix_typed_so_far_is_suggested() -> None:
    index = NameIndex((n, n) for n in ("watercolor wash", "waterfall", "wax figure", "zebra"))
    assert index.suggest("waterc")[0] == "watercolor wash"


def _info(kind: str) -> FileInfo:
    return FileInfo(
        path="x.safetensors",
        kind=kind,
        architecture="sd15",
        size_bytes=1,  # type: ignore[arg-type]
        sha256="0" * 64,
        autov2="0" * 10,
        a1111_hash="0" * 12,
    )


def test_from_file_info_refuses_the_wrong_kind() -> None:
    with pytest.raises(RegistryError, match="/model add"):
        LoraEntry.from_file_info(_info("checkpoint"))
    with pytest.raises(RegistryError, match="/lora add"):
        ModelEntry.from_file_info(_info("lora"))
    # Only LoRA-like files are LoRAs: an embedding, a VAE or a file of unknown keys is refused
    # with what it is and where it goes instead.
    with pytest.raises(RegistryError, match="textual-inversion embedding.*`/embedding add`"):
        LoraEntry.from_file_info(_info("embedding"))
    with pytest.raises(RegistryError, match="is a VAE"):
        LoraEntry.from_file_info(_info("vae"))
    with pytest.raises(RegistryError, match="not a file Atelier recognises"):
        LoraEntry.from_file_info(_info("unknown"))
    assert LoraEntry.from_file_info(_info("lora")).name == "x"
