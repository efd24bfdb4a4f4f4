"""LoRA sources without a network: every AIR form and Civitai link, hashes, refusals that show
the accepted shapes, the checks made before a download, AIRs in /imagine, sources stored."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from bot.registry import Catalog, NsfwPolicy, Registry, RegistryError, ServerSettings
from bot.registry.text import parse_air
from bot.request.parse import build_request, extract_inline_loras
from bot.request.validation import Rejected, Validated, validate
from bot.sources.civitai import CivitaiFile, CivitaiVersion, html_to_text, read_version
from bot.sources.plan import FetchRefused, Limits, base_model_of, plan_fetch
from bot.sources.refs import ACCEPTED_SHAPES, SourceError, parse_source, split_inline_air

from .conftest import ADMIN, GUILD, lora, model

AIR_FORMS = [
    # (text, ecosystem, type, source, id, version, file id, format)
    ("urn:air:sdxl:lora:civitai:120096@135931", "sdxl", "lora", "civitai", "120096", "135931", None, None),
    ("air:sdxl:lora:civitai:120096@135931", "sdxl", "lora", "civitai", "120096", "135931", None, None),
    ("sdxl:lora:civitai:120096@135931", "sdxl", "lora", "civitai", "120096", "135931", None, None),
    ("URN:AIR:SDXL:LORA:civitai:1@2", "sdxl", "lora", "civitai", "1", "2", None, None),
    ("civitai:120096@135931", None, None, "civitai", "120096", "135931", None, None),
    ("civitai:120096", None, None, "civitai", "120096", None, None, None),
    ("lora:civitai:1@2", None, "lora", "civitai", "1", "2", None, None),
    ("pony:civitai:1@2", "pony", None, "civitai", "1", "2", None, None),
    ("urn:air:sdxl:lora:civitai:120096@135931+999", "sdxl", "lora", "civitai", "120096", "135931", "999", None),
    ("urn:air:sdxl:checkpoint:civitai:827184@2514310+2402203", "sdxl", "checkpoint", "civitai", "827184", "2514310", "2402203", None),
    ("urn:air:sd1:lora:civitai:1@2.safetensor", "sd1", "lora", "civitai", "1", "2", None, "safetensor"),
    ("urn:air:sd1:lora:civitai:1@2+3.safetensor", "sd1", "lora", "civitai", "1", "2", "3", "safetensor"),
    ("urn:air:illustrious:lora:civitai:795765@900661", "illustrious", "lora", "civitai", "795765", "900661", None, None),
    ("urn:air:pony:lora:civitai:1@2", "pony", "lora", "civitai", "1", "2", None, None),
    ("urn:air:flux1:lora:civitai:685229@766909", "flux1", "lora", "civitai", "685229", "766909", None, None),
    ("urn:air:other:upscaler:civitai:147759@164821", "other", "upscaler", "civitai", "147759", "164821", None, None),
    ("urn:air:other:other:civitai-r2:civitai-worker-assets@sam_vit_b_01ec64.pth", "other", "other", "civitai-r2",
     "civitai-worker-assets", "sam_vit_b_01ec64", None, "pth"),
    ("urn:air:sdxl:vae:huggingface:stabilityai/sdxl-vae", "sdxl", "vae", "huggingface", "stabilityai/sdxl-vae", None, None, None),
]  # fmt: skip


@pytest.mark.parametrize(("text", "ecosystem", "kind", "source", "id", "version", "file_id", "fmt"), AIR_FORMS)
def test_every_air_form_parses(
    text: str, ecosystem: str | None, kind: str | None, source: str, id: str, version: str | None, file_id: str | None, fmt: str | None
) -> None:
    air = parse_air(text)
    assert (air.ecosystem, air.type, air.source, air.id, air.version, air.file_id, air.format) == (
        ecosystem, kind, source, id, version, file_id, fmt
    )  # fmt: skip
    assert parse_air(str(air)) == air  # what is written back reads the same


def test_ecosystems_map_to_architectures_and_families() -> None:
    assert [parse_air(f"urn:air:{e}:lora:civitai:1@2").architecture for e in ("sd1", "sdxl", "pony", "illustrious", "flux1", "other")] == [
        "sd15", "sdxl", "sdxl", "sdxl", "flux", "unknown"
    ]  # fmt: skip
    assert parse_air("urn:air:pony:lora:civitai:1@2").family == "pony"
    assert parse_air("civitai:1@2").architecture == "unknown"
    assert parse_air("urn:air:sdxl:lora:civitai:120096@135931").url == "https://civitai.com/models/120096?modelVersionId=135931"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("urn:air:sdxl:lora", "names no source"),
        ("urn:air:zzz:lora:civitai:1@2", "Unknown AIR ecosystem `zzz`"),
        ("urn:air:sdxl:weights:civitai:1@2", "Unknown AIR type `weights`"),
        ("civitai:abc@1", "numbers"),
        ("civitai:1@2@3", "numbers"),
        ("javascript:alert(1)", "names no source"),
        ("", "not a valid AIR"),
    ],
)
def test_anything_else_is_refused_with_the_accepted_shapes(text: str, needle: str) -> None:
    with pytest.raises(RegistryError) as refused:
        parse_air(text)
    assert needle in str(refused.value)
    if needle in ("names no source", "numbers", "not a valid AIR"):
        assert "civitai:120096@135931" in str(refused.value)  # the shapes are shown


@pytest.mark.parametrize(
    ("text", "kind", "version", "model", "file_id"),
    [
        ("civitai:120096@135931", "version", 135931, 120096, None),
        ("urn:air:sd1:lora:civitai:120096@135931+42", "version", 135931, 120096, 42),
        ("civitai:120096", "model", None, 120096, None),
        ("https://civitai.com/models/120096?modelVersionId=135931", "version", 135931, 120096, None),
        ("https://civitai.com/models/120096/pixel-quest?modelVersionId=135931", "version", 135931, 120096, None),
        ("https://www.civitai.com/models/120096", "model", None, 120096, None),
        ("https://civitai.red/models/120096?modelVersionId=135931", "version", 135931, 120096, None),
        ("https://civitai.com/api/download/models/135931", "version", 135931, None, None),
        ("https://civitai.com/api/download/models/135931?type=Model&format=SafeTensor&fileId=7", "version", 135931, None, 7),
        ("https://civitai.com/api/v1/model-versions/135931", "version", 135931, None, None),
    ],
)
def test_sources_that_can_be_fetched(text: str, kind: str, version: int | None, model: int | None, file_id: int | None) -> None:
    ref = parse_source(text)
    assert (ref.kind, ref.version_id, ref.model_id, ref.file_id) == (kind, version, model, file_id)


def test_hashes_and_refused_sources() -> None:
    assert parse_source("a" * 64).hash == "A" * 64 and parse_source("ABCDEF0123").kind == "hash"
    for bad, needle in [
        ("abc123", "hex digits"),
        ("https://example.com/models/1", "Civitai link"),
        ("https://civitai.com/images/123", "Civitai model or download link"),
        ("urn:air:sdxl:vae:huggingface:stabilityai/sdxl-vae", "only Civitai"),
        ("urn:air:sdxl:checkpoint:civitai:1@2", "names a checkpoint"),
        ("civitai-r2:bucket@file.pth", "only Civitai"),
    ]:
        with pytest.raises(SourceError, match=needle):
            parse_source(bad)
    with pytest.raises(SourceError) as shapes:
        parse_source("please fetch the pixel one")
    assert ACCEPTED_SHAPES in str(shapes.value)


def test_inline_tags_may_name_a_lora_by_its_air() -> None:
    assert split_inline_air("civitai:120096@135931:0.7") == ("civitai:120096@135931", "0.7")
    assert split_inline_air("urn:air:sdxl:lora:civitai:1@2") == ("urn:air:sdxl:lora:civitai:1@2", None)
    assert split_inline_air("civitai:1@2:") == ("civitai:1@2", "")
    assert split_inline_air("civitai:0.7") is None and split_inline_air("pixel art:0.7") is None
    prompt, tags = extract_inline_loras("a castle <lora:civitai:120096@135931:0.7> <lora:Pixel Art:0.5>")
    assert prompt == "a castle"
    assert [(t.name, t.weight_text) for t in tags] == [("civitai:120096@135931", "0.7"), ("Pixel Art", "0.5")]


def _catalog(**settings: Any) -> Catalog:
    return Catalog(
        GUILD,
        ServerSettings(**settings),
        [model("Dream", "sd15"), model("Juggernaut XL", "sdxl")],
        [
            lora("Pixel Quest", "sd15", source="urn:air:sd1:lora:civitai:120096@135931", trigger_words=("pixel art",)),
            lora("Pixel Quest v2", "sd15", source="https://civitai.com/models/120096?modelVersionId=135999"),
            lora("Neon", "sd15", source="urn:air:sd1:lora:civitai:5@6"),
            lora("Old Neon", "sd15", source="urn:air:sd1:lora:civitai:7@8", enabled=False),
        ],
    )


def _request(prompt: str, **kw: Any) -> Any:
    return build_request(guild_id=GUILD, channel_id=1, user_id=2, channel_is_nsfw=False, prompt=prompt, model="Dream", **kw)


def test_imagine_resolves_airs_in_slots_and_inline_tags() -> None:
    result = validate(_request("a castle <lora:urn:air:sd1:lora:civitai:5@6:0.6>", slots=[("civitai:120096@135931", "0.8")]), _catalog(), new_seed=lambda: 1)
    assert isinstance(result, Validated), result
    assert [(ref.name, ref.weight) for ref in result.recipe.loras] == [("Pixel Quest", 0.8), ("Neon", 0.6)]
    assert "pixel art" in result.recipe.prompt  # its trigger word, as for a LoRA picked by name
    # A source stored as a link is found by the version's AIR too (version ids are site-wide).
    linked = validate(_request("x", slots=[("civitai:999@135999", None)]), _catalog(), new_seed=lambda: 1)
    assert isinstance(linked, Validated) and linked.recipe.loras[0].name == "Pixel Quest v2"


def test_imagine_explains_airs_it_cannot_resolve() -> None:
    catalog = _catalog()
    cases = {
        "civitai:1@404": "unknown_air",
        "civitai:120096": "ambiguous_air",  # two versions registered, none named
        "civitai:7@8": "lora_disabled",
    }
    for air, code in cases.items():
        result = validate(_request("x", slots=[(air, None)]), catalog, new_seed=lambda: 1)
        assert isinstance(result, Rejected) and code in [p.code for p in result.problems], (air, result)
    unknown = validate(_request("x", slots=[("civitai:1@404", None)]), catalog, new_seed=lambda: 1)
    assert isinstance(unknown, Rejected) and "/lora add source:civitai:1@404" in unknown.as_text()
    twice = validate(_request("x <lora:Neon:0.5>", slots=[("civitai:5@6", None)]), catalog, new_seed=lambda: 1)
    assert isinstance(twice, Rejected) and "duplicate_lora" in [p.code for p in twice.problems]


async def test_sources_are_stored_in_their_full_form(registry: Registry) -> None:
    stored = await registry.loras.add(GUILD, lora("short", "sdxl", source="civitai:120096@135931"), ADMIN)
    assert stored.source == "urn:air:sdxl:lora:civitai:120096@135931"
    locon = await registry.loras.add(GUILD, lora("locon", "sd15", source="urn:air:sd1:lycoris:civitai:3@4+9"), ADMIN)
    assert locon.source == "urn:air:sd1:lycoris:civitai:3@4"
    with pytest.raises(RegistryError, match="names a 'embedding'"):
        await registry.loras.add(GUILD, lora("wrong kind", "sd15", source="urn:air:sd1:embedding:civitai:1@2"), ADMIN)
    with pytest.raises(RegistryError, match="AIR is for sdxl but the file is sd15"):
        await registry.loras.add(GUILD, lora("arch", "sd15", source="urn:air:pony:lora:civitai:1@2"), ADMIN)
    (entry,) = [e for e in await registry.audit.entries(GUILD) if e.target == "short"]
    assert entry.details["source"] == "urn:air:sdxl:lora:civitai:120096@135931"


# --- what is checked before a download -----------------------------------------------------


def civitai_version(**changes: Any) -> CivitaiVersion:
    file = CivitaiFile(
        id=11, name="pixels.safetensors", size_bytes=150_000_000, type="Model", format="SafeTensor",
        sha256="ab" * 32, autov2="ABABABABAB", primary=True, download_url="https://civitai.com/api/download/models/2",
    )  # fmt: skip
    values: dict[str, Any] = {
        "id": 135931, "model_id": 120096, "name": "v1.0", "model_name": "Pixel: Quest", "model_type": "LORA",
        "base_model": "SD 1.5", "trained_words": ("pixel art",), "description": "", "air": "", "model_nsfw": False,
        "nsfw_level": 1, "files": (file,),
    }  # fmt: skip
    values.update(changes)
    return CivitaiVersion(**values)


def plan(version: CivitaiVersion, *, nsfw_policy: NsfwPolicy = NsfwPolicy.NSFW_CHANNELS, used: int = 0, **kw: Any) -> Any:
    return plan_fetch(
        version,
        ref=kw.pop("ref", parse_source(f"civitai:{version.model_id}@{version.id}")),
        models=kw.pop("models", [model("Dream", "sd15", family="sd15"), model("Juggernaut XL", "sdxl", family="sdxl")]),
        settings=ServerSettings(nsfw_policy=nsfw_policy),
        folder="community/civitai",
        limits=Limits(max_file_bytes=kw.pop("cap", 500_000_000), quota_bytes=kw.pop("quota", 1_000_000_000), used_bytes=used),
        **kw,
    )


def reasons(version: CivitaiVersion, **kw: Any) -> str:
    with pytest.raises(FetchRefused) as refused:
        plan(version, **kw)
    return " | ".join(refused.value.reasons)


def test_a_good_version_gets_a_plan() -> None:
    fetch = plan(civitai_version())
    assert fetch.kind == "lora" and fetch.architecture == "sd15" and fetch.family == "sd15" and not fetch.nsfw
    assert fetch.path == "community/civitai/135931-pixels.safetensors"
    assert fetch.name == "Pixel Quest"  # ':' would break <lora:name:w>
    taken = plan(civitai_version(), taken_names={"pixel quest"})
    assert taken.name == "Pixel Quest v1.0"
    embedding = plan(civitai_version(model_type="TextualInversion"))
    assert embedding.kind == "embedding"


def test_everything_wrong_is_said_at_once_before_any_download() -> None:
    pickle_file = CivitaiFile(
        id=12, name="pixels.pt", size_bytes=900_000_000, type="Model", format="PickleTensor", sha256="",
        autov2="", primary=True, download_url="",
    )  # fmt: skip
    text = reasons(civitai_version(model_type="Checkpoint", base_model="Flux.1 D", files=(pickle_file,)))
    assert "is a checkpoint" in text and "pickle" in text and "no SHA256" in text
    assert "500.0 MB this bot's operator allows" in text and "Flux" in text


@pytest.mark.parametrize(
    ("changes", "kw", "needle"),
    [
        ({"model_type": "Checkpoint"}, {}, "checkpoint (a full model)"),
        ({"model_type": "Controlnet"}, {}, "Controlnet on Civitai"),
        ({"status": "Draft"}, {}, "not published"),
        ({"base_model": "SDXL 1.0"}, {"models": [model("Dream", "sd15")]}, "made for SDXL (Civitai: SDXL 1.0)"),
        ({"base_model": "Wan Video 14B t2v"}, {}, "cannot run"),
        ({}, {"models": []}, "no models yet"),
        ({}, {"cap": 100_000_000}, "over the 100.0 MB"),
        ({}, {"used": 900_000_000}, "100.0 MB left of its 1.0 GB download quota"),
        ({"model_nsfw": True}, {"nsfw_policy": NsfwPolicy.NEVER}, "policy is `never`"),
        ({"nsfw_level": 8}, {"nsfw_policy": NsfwPolicy.NEVER}, "policy is `never`"),
        ({"model_name": "Pixel Quest"}, {"taken_names": {"pixel quest", "pixel quest v1.0"}}, "is taken"),
    ],
)
def test_each_refusal_says_what_to_do(changes: dict[str, Any], kw: dict[str, Any], needle: str) -> None:
    assert needle in reasons(civitai_version(**changes), **kw)


def test_archives_pickles_and_chosen_files() -> None:
    base = civitai_version()
    (good,) = base.files
    archive = replace(good, id=13, name="pack.zip", type="Archive", format="Other")
    pickled = replace(good, id=14, name="pixels.ckpt", format="PickleTensor")
    assert "archive" in reasons(replace(base, files=(archive,)))
    assert "pickle" in reasons(replace(base, files=(pickled,)))
    # A pickle as primary, a safetensors beside it: the safetensors one is taken, and said so.
    both = plan(replace(base, files=(replace(pickled, primary=True), replace(good, primary=False))))
    assert both.file.id == good.id and "not safetensors" in both.notes[0]
    # +fileId picks exactly that file, even when it is the bad one.
    assert "pickle" in reasons(replace(base, files=(pickled, good)), ref=parse_source("civitai:120096@135931+14"))
    assert "has no file 99" in reasons(base, ref=parse_source("civitai:120096@135931+99"))
    by_hash = plan(replace(base, files=(replace(good, id=20, sha256="cd" * 32, hashes={"SHA256": "CD" * 32}), good)),
                   ref=parse_source("CD" * 32))  # fmt: skip
    assert by_hash.file.id == 20


def test_nsfw_and_family_notes() -> None:
    flagged = plan(civitai_version(nsfw_level=1 | 4))
    assert flagged.nsfw and "marked NSFW here" in flagged.notes[0]
    pony = plan(civitai_version(base_model="Pony"), models=[model("Illu", "sdxl", family="illustrious")])
    assert pony.family == "pony" and "trained on Pony" in pony.notes[0] and "Illustrious" in pony.notes[0]
    assert base_model_of("SDXL 1.0 LCM") == ("sdxl", "sdxl") and base_model_of("Pony V7") == ("unknown", "unknown")
    assert base_model_of("Illustrious") == ("sdxl", "illustrious") and base_model_of("SD 1.5 Hyper") == ("sd15", "sd15")


def test_civitai_answers_are_read_field_by_field() -> None:
    version = read_version({
        "id": 2, "modelId": 1, "name": "v2", "baseModel": "Pony", "nsfwLevel": 5, "trainedWords": ["a", " ", "b"],
        "description": "<p>Line one<br>two &amp; <b>three</b></p><p>Next</p>", "air": "urn:air:pony:lora:civitai:1@2",
        "model": {"name": "M", "type": "LORA", "nsfw": False},
        "files": [{"id": 9, "sizeKB": 1.5, "name": "m.safetensors", "type": "Model", "primary": True,
                   "metadata": {"format": "SafeTensor"}, "hashes": {"SHA256": "AB" * 32, "AutoV2": "abababab12"},
                   "downloadUrl": "https://civitai.com/api/download/models/2"}],
        "images": [{"url": "https://image.civitai.com/x.jpeg", "nsfwLevel": 4, "type": "image"},
                   {"url": "https://image.civitai.com/y.jpeg", "nsfwLevel": 1, "type": "image"}],
    })  # fmt: skip
    (file,) = version.files
    assert (file.size_bytes, file.sha256, file.autov2, file.is_safetensors) == (1536, "ab" * 32, "ABABABAB12", True)
    assert version.trained_words == ("a", "b") and version.nsfw and version.preview() == "https://image.civitai.com/y.jpeg"
    assert version.description == "Line one\ntwo & three\n\nNext"
    assert html_to_text("<p>" + "x" * 3000 + "</p>", limit=100).endswith("…")


def test_production_code_never_imports_the_test_doubles() -> None:
    """The Civitai double (and everything else in tests/) stays out of bot/ and engine/."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    offenders = []
    for path in [*root.joinpath("bot").rglob("*.py"), *root.joinpath("engine").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n == "tests" or n.startswith("tests.")]
    assert offenders == []


def test_the_operator_decides_who_fetches_and_where_files_go() -> None:
    from bot.operator.access import AccessPolicy
    from bot.sources.civitai import CivitaiClient
    from bot.sources.fetcher import Fetcher, FetchSettings

    policy = AccessPolicy.from_config(shares={"1": ["model:base/", "community-a/"], "2": ["lora:one.safetensors"], "*": ["shared/"]})

    def fetcher(**settings: Any) -> Fetcher:
        return Fetcher(registry=None, engine=None, civitai=CivitaiClient(), access=lambda: policy, settings=FetchSettings(**settings))

    assert "off on this bot" in (fetcher().refusal(1) or "")
    on = fetcher(enabled=True, guilds=frozenset({1, 2}))
    assert on.refusal(1) is None and on.folder(1) == "community-a/civitai"
    assert "no folder" in (on.refusal(2) or "")  # a share of single files: nothing fetched would stay visible
    assert "not allowed this server" in (on.refusal(3) or "")
    assert fetcher(enabled=True).folder(3) == "shared/civitai"
    assert Fetcher(registry=None, engine=None, civitai=CivitaiClient(), access=AccessPolicy, settings=FetchSettings(enabled=True)).folder(9) == "civitai"
    assert "sekrit" not in repr(FetchSettings(token="sekrit")) and "sekrit" not in repr(CivitaiClient(token="sekrit"))


def test_fetching_configuration() -> None:
    from bot.operator.config import BotConfig, ConfigError

    config = BotConfig.load(env={
        "ATELIER_CIVITAI_FETCH": "yes", "ATELIER_CIVITAI_FETCH_GUILDS": "11, 22", "ATELIER_CIVITAI_TOKEN": "sekrit-key",
        "ATELIER_CIVITAI_MAX_FILE_SIZE": "500MB", "ATELIER_CIVITAI_GUILD_QUOTA": "1GiB",
        "ATELIER_CIVITAI_DOWNLOAD_HOSTS": "civitai.com, *.r2.cloudflarestorage.com",
    })  # fmt: skip
    assert config.civitai_fetch and config.civitai_fetch_guilds == (11, 22)
    assert (config.civitai_max_file_size, config.civitai_guild_quota) == (500_000_000, 1024**3)
    assert config.civitai_download_hosts == ("civitai.com", "*.r2.cloudflarestorage.com")
    assert "sekrit-key" not in repr(config)
    defaults = BotConfig.load(env={})
    assert not defaults.civitai_fetch and defaults.civitai_url == "https://civitai.com" and "civitai.com" in defaults.civitai_download_hosts
    for env, needle in [
        ({"ATELIER_CIVITAI_MAX_FILE_SIZE": "huge"}, "civitai_max_file_size"),
        ({"ATELIER_CIVITAI_STALL_TIMEOUT": "0"}, "above zero"),
        ({"ATELIER_CIVITAI_URL": "ftp://mirror"}, r"an http\(s\) address"),
        ({"ATELIER_CIVITAI_FOLDER": "../outside"}, "inside the LoRA folder"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            BotConfig.load(env=env)


def _flux(name: str, variant: str | None) -> Any:
    return model(name, "flux", variant=variant, default_width=1024, default_height=1024)


@pytest.mark.parametrize(
    ("base_model", "variant", "needle"),
    [
        ("Flux.1 S", "schnell", "trained on FLUX.1 schnell and this model is FLUX.1 dev"),
        ("Flux.1 Kontext", "kontext", "made for editing a reference image rather than text-to-image"),
        ("Flux.1 D", "dev", None),
    ],
)
def test_civitai_base_model_variant_is_compared_with_the_servers_models(base_model: str, variant: str, needle: str | None) -> None:
    """Civitai's baseModel names the FLUX variant a LoRA was trained on (its AIR says only
    ``flux1``): a version for another variant than this server's FLUX models is warned about."""
    version = civitai_version(base_model=base_model)
    fetch = plan(version, models=[_flux("Flux Dev", "dev"), model("Dream", "sd15")])
    assert (fetch.architecture, fetch.variant) == ("flux", variant)
    warned = [n for n in fetch.notes if "another variant" in n]
    if needle is None:
        assert warned == []
    else:
        assert len(warned) == 1 and needle in warned[0] and f"Civitai says it was made for {base_model}" in warned[0]
    # A model whose variant is not known, or one of the same variant among others: no warning.
    assert not [n for n in plan(version, models=[_flux("Old Flux", None)]).notes if "another variant" in n]
    both = plan(version, models=[_flux("Flux Dev", "dev"), _flux("Other", variant)])
    assert not [n for n in both.notes if "another variant" in n]
