"""Families, embeddings, clip skip and long prompts in validation and in the registry."""

from __future__ import annotations

from typing import Any

from bot.registry import Catalog, Registry, ServerSettings
from bot.registry.models import EmbeddingEntry
from bot.request.parse import build_request
from bot.request.validation import Rejected, Validated, validate
from engine.protocol import FileInfo

from .conftest import ADMIN, GUILD, lora, model


def catalog() -> Catalog:
    return Catalog(
        GUILD,
        ServerSettings(),
        [
            model("Illu", "sdxl", family="illustrious"),
            model("Noob", "sdxl", family="noobai"),
            model("Anime15", "sd15", family="sd15", default_clip_skip=2, prediction_type="v_prediction"),
        ],
        [
            lora("Pony Style", "sdxl", family="pony"),
            lora("Illu Style", "sdxl", family="illustrious"),
            lora("Trained Skip1", "sd15", trained_clip_skip=1),
        ],
        [
            EmbeddingEntry("EasyNegative", "sd15", "emb/EasyNegative.safetensors", sha256="ef" * 32),
            EmbeddingEntry("negXL", "sdxl", "emb/negXL.safetensors"),
        ],
    )


def run(prompt: str = "a castle", **kw: Any) -> Validated | Rejected:
    values: dict[str, Any] = dict(guild_id=GUILD, channel_id=1, user_id=2, channel_is_nsfw=False, prompt=prompt)
    values.update(kw)
    return validate(build_request(**values), catalog(), new_seed=lambda: 7)


def notes(result: Validated | Rejected) -> dict[str, str]:
    assert isinstance(result, Validated), result
    return {n.code: n.message for n in result.notes}


def test_a_pony_lora_on_an_illustrious_model_is_warned_naming_both() -> None:
    result = run(model="Illu", slots=[("Pony Style", "0.8")])
    message = notes(result)["family_mismatch"]
    assert "Pony LoRA" in message and "Illustrious model" in message
    assert "family_mismatch" not in notes(run(model="Illu", slots=[("Illu Style", None)]))
    related = notes(run(model="Noob", slots=[("Illu Style", None)]))["family_mismatch"]
    assert "related" in related


def test_embeddings_named_in_the_negative_join_the_recipe() -> None:
    result = run(model="Anime15", negative_prompt="easynegative, lowres")
    assert isinstance(result, Validated)
    assert [(e.name, e.file, e.sha256) for e in result.recipe.embeddings] == [
        ("EasyNegative", "emb/EasyNegative.safetensors", "ef" * 32)
    ]
    # A word that only contains the name is not the embedding.
    assert run(model="Anime15", negative_prompt="noteasynegatives").recipe.embeddings == ()  # type: ignore[union-attr]


def test_an_embedding_for_another_architecture_is_refused_with_a_fix() -> None:
    result = run(model="Illu", negative_prompt="EasyNegative")
    assert isinstance(result, Rejected)
    (problem,) = result.problems
    assert problem.code == "embedding_arch_mismatch"
    assert "SD 1.5" in problem.message and "SDXL" in problem.message and "Remove" in problem.fix


def test_clip_skip_prediction_and_long_prompt_notes() -> None:
    result = run(model="Anime15", slots=[("Trained Skip1", None)])
    assert isinstance(result, Validated)
    assert (result.recipe.clip_skip, result.recipe.prediction_type) == (2, "v_prediction")
    assert "trained with clip skip 1" in notes(result)["clip_skip_differs"]
    assert run(model="Anime15", clip_skip=1).recipe.clip_skip == 1  # type: ignore[union-attr]
    long = notes(run(" ".join(["red cat,"] * 67), model="Anime15"))["long_prompt"]
    assert "201 tokens" in long and "3 chunks" in long


async def test_registry_keeps_families_formats_and_embeddings(registry: Registry) -> None:
    info = FileInfo(
        path="loha.safetensors", kind="lora", architecture="sdxl", size_bytes=1, sha256="1" * 64,
        autov2="1" * 10, a1111_hash="1" * 12, rank=8, lora_format="loha", family="pony", clip_skip=2,
    )  # fmt: skip
    from bot.registry import LoraEntry

    added = await registry.loras.add(GUILD, LoraEntry.from_file_info(info), ADMIN)
    fetched = await registry.loras.get(GUILD, added.name)
    assert fetched is not None
    assert (fetched.family, fetched.lora_format, fetched.rank, fetched.trained_clip_skip) == ("pony", "loha", 8, 2)
    await registry.loras.add(GUILD, lora("Illu Thing", "sdxl", family="illustrious"), ADMIN)
    found = await registry.loras.search(GUILD, family="pony")
    assert [e.name for e in found] == [added.name]
    choices = await registry.loras.autocomplete(GUILD, "", family="illustrious")
    assert choices[0].value == "Illu Thing"
    choices = await registry.loras.autocomplete(GUILD, "", family="pony")
    assert choices[0].value == added.name

    embedding = EmbeddingEntry.from_file_info(
        FileInfo(path="emb/EasyNegative.safetensors", kind="embedding", architecture="sd15", size_bytes=1,
                 sha256="2" * 64, autov2="2" * 10, a1111_hash="2" * 12, vectors=8)  # fmt: skip
    )
    await registry.embeddings.add(GUILD, embedding, ADMIN)
    assert [e.name for e in (await registry.catalogs.get(GUILD)).embeddings.values()] == ["EasyNegative"]
    assert [e.name for e in await registry.embeddings.autocomplete(GUILD, "easy", architecture="sd15")] == ["EasyNegative"]
    assert await registry.embeddings.autocomplete(GUILD, "easy", architecture="sdxl") == []
    await registry.embeddings.remove(GUILD, "easynegative", ADMIN)
    assert await registry.embeddings.all(GUILD) == []
    updated = await registry.models.update(
        GUILD, (await registry.models.add(GUILD, model("M", "sd15"), ADMIN)).name, ADMIN,
        family="sd15", default_clip_skip=2, prediction_type="v_prediction_ztsnr",
    )  # fmt: skip
    assert (updated.family, updated.default_clip_skip, updated.prediction_type) == ("sd15", 2, "v_prediction_ztsnr")


def test_embeddings_on_flux_are_refused_with_the_reason() -> None:
    """FLUX.1 reads the prompt through T5: a textual-inversion embedding (CLIP word vectors)
    means nothing there, even one whose architecture the registry could not tell."""
    flux_catalog = Catalog(
        GUILD, ServerSettings(), [model("Flux Dev", "flux", default_width=1024, default_height=1024, default_cfg=3.5)],
        [], [EmbeddingEntry("mystery", "unknown", "emb/mystery.safetensors")],
    )  # fmt: skip
    request = build_request(guild_id=GUILD, channel_id=1, user_id=2, channel_is_nsfw=False,
                            prompt="a castle, mystery", model="Flux Dev")  # fmt: skip
    result = validate(request, flux_catalog, new_seed=lambda: 7)
    assert isinstance(result, Rejected)
    (problem,) = result.problems
    assert problem.code == "embeddings_unsupported"
    assert "T5" in problem.message and "FLUX.1" in problem.message and "Remove `mystery`" in problem.fix
    plain = build_request(guild_id=GUILD, channel_id=1, user_id=2, channel_is_nsfw=False, prompt="a castle",
                          model="Flux Dev")  # fmt: skip
    assert isinstance(validate(plain, flux_catalog, new_seed=lambda: 7), Validated)
