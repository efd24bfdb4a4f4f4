"""Sampling profiles (issue 21): the shipped data and detection from what a file says."""

from __future__ import annotations

import json
import time

import pytest

from engine import profiles
from engine.profiles import ProfileError, detect, parse_profile
from engine.recipe.sampler_names import SAMPLERS

#: File names exactly as the authors publish them (Hugging Face repositories), and the
#: profile each must be proposed.
AUTHORS_FILES = {
    "lcm-lora-sdxl/pytorch_lora_weights.safetensors": None,  # the repo's file name says nothing
    "lcm-lora-sdxl.safetensors": "lcm-sdxl",
    "lcm-lora-sdv1-5.safetensors": "lcm-sd15",
    "sdxl_lightning_2step_lora.safetensors": "sdxl-lightning-2step",
    "sdxl_lightning_4step_lora.safetensors": "sdxl-lightning-4step",
    "sdxl_lightning_8step_lora.safetensors": "sdxl-lightning-8step",
    "Hyper-SDXL-2steps-lora.safetensors": "hyper-sdxl-2steps",
    "Hyper-SDXL-4steps-lora.safetensors": "hyper-sdxl-4steps",
    "Hyper-SDXL-8steps-lora.safetensors": "hyper-sdxl-8steps",
    "Hyper-SDXL-8steps-CFG-lora.safetensors": "hyper-sdxl-8steps-cfg",
    "Hyper-SDXL-12steps-CFG-lora.safetensors": "hyper-sdxl-12steps-cfg",
    "Hyper-FLUX.1-dev-8steps-lora.safetensors": "hyper-flux-dev-8steps",
    "Hyper-FLUX.1-dev-16steps-lora.safetensors": "hyper-flux-dev-16steps",
    "dmd2_sdxl_4step_lora.safetensors": "dmd2-sdxl-4step",
    "dmd2_sdxl_4step_lora_fp16.safetensors": "dmd2-sdxl-4step",
    "TCD-SDXL-LoRA.safetensors": "tcd-sdxl",
    "TCD-SD15-LoRA.safetensors": "tcd-sd15",
    "Qwen-Image-Lightning-4steps-V1.0.safetensors": "qwen-image-lightning-4steps",
    "Qwen-Image-Lightning-8steps-V2.0-bf16.safetensors": "qwen-image-lightning-8steps",
    "FLUX.1-Turbo-Alpha.safetensors": "flux-turbo-alpha",
    "loras\\speed\\sdxl_lightning_4step_lora.safetensors": "sdxl-lightning-4step",
    "oil painting v2.safetensors": None,
    "lightning_bolt_style.safetensors": None,
    "hyper_realistic_skin.safetensors": None,
}


def test_every_shipped_profile_is_valid_and_every_value_has_its_source() -> None:
    shipped = profiles.profiles()
    assert len(shipped) >= 15
    for profile in shipped.values():
        assert profile.sampler in SAMPLERS
        for key, source in profile.sources.items():
            assert source.startswith("https://"), (profile.id, key)
        assert {"sampler", "steps", "cfg"} <= set(profile.sources)
    # The example the issue gives: Hyper-FLUX at LoRA weight 0.125, from the card.
    hyper_flux = shipped["hyper-flux-dev-8steps"]
    assert hyper_flux.lora_weight == 0.125 and "0.125" in hyper_flux.sources["lora_weight"]
    assert shipped["sdxl-lightning-4step"].sampler == "Euler SGM Uniform"
    assert shipped["dmd2-sdxl-4step"].sampler == "LCM SGM Uniform"
    assert shipped["tcd-sdxl"].eta == 0.3
    assert shipped["qwen-image-lightning-4steps"].shift == 3.0


@pytest.mark.parametrize(("name", "expected"), sorted(AUTHORS_FILES.items()))
def test_file_names_as_the_authors_publish_them(name: str, expected: str | None) -> None:
    found = detect(name)
    assert (found.profile.id if found else None) == expected
    if found:
        assert found.evidence == "file name"


def test_metadata_names_come_first() -> None:
    """A renamed file still says what it is in its metadata; the trainer's name wins."""
    kohya = detect("renamed.safetensors", {"ss_output_name": "sdxl_lightning_8step_lora"})
    assert kohya is not None and (kohya.profile.id, kohya.evidence) == ("sdxl-lightning-8step", "ss_output_name")
    spec = detect("sdxl_lightning_4step_lora.safetensors", {"modelspec.title": "Hyper-SDXL-4steps-lora"})
    assert spec is not None and (spec.profile.id, spec.evidence) == ("hyper-sdxl-4steps", "modelspec.title")
    adapter = detect("pytorch_lora_weights.safetensors", {"lora_adapter_metadata": json.dumps({"name": "TCD-SDXL-LoRA", "r": 64})})
    assert adapter is not None and (adapter.profile.id, adapter.evidence) == ("tcd-sdxl", "lora_adapter_metadata name")
    # Metadata that names nothing falls through to the file name.
    plain = detect("dmd2_sdxl_4step_lora.safetensors", {"ss_output_name": "last", "lora_adapter_metadata": "[1, 2]"})
    assert plain is not None and plain.profile.id == "dmd2-sdxl-4step"


def test_civitai_base_model_is_the_last_resort_and_kind_is_respected() -> None:
    found = detect("dreamshaper_xl.safetensors", base_model="SDXL Lightning")
    assert found is not None and (found.profile.id, found.evidence) == ("sdxl-lightning-4step", "Civitai base model")
    assert detect("x.safetensors", base_model="SDXL 1.0 LCM").profile.id == "lcm-sdxl"  # type: ignore[union-attr]
    assert detect("x.safetensors", base_model="SDXL 1.0") is None
    # ByteDance's whole 4-step checkpoint, and a Lightning merge from Civitai, run as the LoRA
    # does; a LoRA is never proposed a distilled checkpoint's profile.
    assert detect("sdxl_lightning_4step.safetensors", kind="checkpoint").profile.id == "sdxl-lightning-4step"  # type: ignore[union-attr]
    assert detect("dreamshaperXL_lightning.safetensors", base_model="SDXL Lightning", kind="checkpoint").profile.id == (  # type: ignore[union-attr]
        "sdxl-lightning-4step")
    assert detect("z_image_turbo_bf16.safetensors", kind="lora") is None
    assert detect("z_image_turbo_bf16.safetensors", kind="checkpoint").profile.id == "z-image-turbo"  # type: ignore[union-attr]
    # schnell's own variant rules already give it 4 steps without guidance: its profile is for
    # fast mode, not proposed from the file name.
    assert detect("flux1-schnell.safetensors") is None


def test_detection_is_bounded_on_hostile_input() -> None:
    huge = "sdxl_lightning_" + "a" * 5_000_000 + "4step_lora"
    nested = "[" * 100_000 + "]" * 100_000
    started = time.perf_counter()
    assert detect(huge + ".safetensors") is None
    assert detect("x" * 5_000_000, {"ss_output_name": huge, "modelspec.title": "-" * 5_000_000,
                                    "lora_adapter_metadata": nested}) is None  # fmt: skip
    assert detect("x.safetensors", {"lora_adapter_metadata": '{"name": "' + "9" * 15_000 + '"}'}) is None
    assert detect("x.safetensors", base_model="SDXL Lightning" * 1_000_000) is None
    assert time.perf_counter() - started < 0.5


def test_cannot_run_says_why() -> None:
    hyper_flux = profiles.get("hyper-flux-dev-8steps")
    assert hyper_flux is not None
    assert hyper_flux.cannot_run("flux", "dev") is None
    assert "schnell" in (hyper_flux.cannot_run("flux", "schnell") or "")
    assert "sdxl" in (hyper_flux.cannot_run("sdxl", None) or "")
    lightning = profiles.get("sdxl-lightning-4step")
    assert lightning is not None and lightning.cannot_run("sdxl", None, SAMPLERS) is None
    assert "Euler SGM Uniform" in (lightning.cannot_run("sdxl", None, ("Euler",)) or "")
    assert lightning.summary() == "Euler SGM Uniform, 4 steps, CFG 1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sampler": "Restart"}, "unknown sampler"),
        ({"steps": 30}, "outside steps_allowed"),
        ({"cfg_allowed": [2, 1]}, "above high"),
        ({"sources": {"steps": "x", "cfg": "y"}}, "no source for its sampler"),
        ({"names": ["SDXL-Lightning"]}, "lower-case"),
        ({"kind": "vae"}, "kind"),
    ],
)
def test_a_bad_profile_is_refused_with_the_reason(change: dict[str, object], message: str) -> None:
    good = {"id": "t", "label": "T", "kind": "lora", "architectures": ["sdxl"], "sampler": "LCM", "steps": 4,
            "steps_allowed": [2, 8], "cfg": 1, "cfg_allowed": [1, 2], "names": ["t"],
            "sources": {"sampler": "s", "steps": "s", "cfg": "s"}}  # fmt: skip
    assert parse_profile(good).id == "t"
    with pytest.raises(ProfileError, match=message):
        parse_profile({**good, **change})
