"""FLUX.1 Kontext edits an input picture in the engine (tiny FLUX.1 build, the recipe's variant).

A Kontext transformer has FLUX.1 dev's keys and shapes, so the recipe's ``variant`` says it is
an edit model; the engine then runs diffusers' ``FluxKontextPipeline`` on the loaded components.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace

import pytest
from PIL import Image

from engine.generate import Generator
from engine.protocol import EngineError, Recipe
from tests.engine.test_img2img import diff, flux_generator, picture, with_input

__all__ = ["flux_generator"]  # the tiny FLUX.1 build the image-to-image tests use

KONTEXT = Recipe(model="flux1-dev.safetensors", prompt="make the sky red", width=80, height=64, steps=3,
                 sampler="Euler", cfg_scale=2.5, seed=11, architecture="flux", variant="kontext")  # fmt: skip


def test_kontext_edits_the_picture_at_the_recipes_size(flux_generator: Generator) -> None:
    a, b = picture(21, (96, 64)), picture(22, (96, 64))
    out_a = flux_generator.run(with_input(flux_generator, KONTEXT, a)).images[0]
    assert Image.open(io.BytesIO(out_a)).size == (80, 64)
    # Bit-identical for the same recipe and picture.
    assert out_a == flux_generator.run(with_input(flux_generator, KONTEXT, a)).images[0]
    # Another picture, same seed and instruction: another image. (The same recipe is bit-identical,
    # so any difference is the picture's; the tiny model's random weights make it small, ~0.1.)
    out_b = flux_generator.run(with_input(flux_generator, KONTEXT, b)).images[0]
    assert diff(out_a, out_b) > 0
    # Another instruction, same picture and seed: another image.
    other = replace(KONTEXT, prompt="turn the house into a boat")
    out_c = flux_generator.run(with_input(flux_generator, other, a)).images[0]
    assert diff(out_a, out_c) > 0


def test_an_edit_differs_from_image_to_image_of_the_same_picture(flux_generator: Generator) -> None:
    a = picture(23, (80, 64))
    edited = flux_generator.run(with_input(flux_generator, KONTEXT, a)).images[0]
    plain = flux_generator.run(with_input(flux_generator, replace(KONTEXT, variant="dev"), a, strength=1.0)).images[0]
    assert diff(edited, plain) > 0


def test_a_kontext_recipe_without_a_picture_stays_text_to_image(flux_generator: Generator) -> None:
    """No picture, no edit: the recipe runs as it did before edits existed (dev's text-to-image)."""
    alone = flux_generator.run(KONTEXT).images[0]
    # The PNGs' recipes differ (their variant); the pixels do not.
    assert diff(alone, flux_generator.run(replace(KONTEXT, variant="dev")).images[0]) == 0


def test_an_edit_whose_picture_did_not_reach_the_engine_is_refused(flux_generator: Generator) -> None:
    with pytest.raises(EngineError, match="input"):
        flux_generator.run(replace(KONTEXT, init_image="0" * 64))


def test_an_upscale_pass_after_an_edit_is_refused(flux_generator: Generator) -> None:
    recipe = with_input(flux_generator, replace(KONTEXT, hires_scale=2.0), picture(24, (80, 64)))
    with pytest.raises(EngineError, match="upscale pass does not run after an edit"):
        flux_generator.run(recipe)


def test_an_edit_model_whose_runtime_cannot_edit_is_refused_with_what_to_do() -> None:
    """An edit model whose runtime has no ``edit`` (a stand-in runtime here: FLUX.1's and
    Qwen-Image's both edit now) is refused by name, before any pipeline is touched (``pipe`` is
    None here)."""
    from types import SimpleNamespace

    from engine.picture_run import edit, edits

    recipe = Recipe(model="qwen-image-edit.safetensors", prompt="make it night", width=64, height=64,
                    architecture="qwen_image", variant="edit", init_image="0" * 64)  # fmt: skip
    runtime = SimpleNamespace(architecture="qwen_image")  # no ``edit``
    assert edits(runtime, recipe)
    with pytest.raises(EngineError, match="qwen_image edit models do not run here yet: pick a text-to-image model"):
        edit(runtime, None, conditioning=None, recipe=recipe, latents=None, generators=[], callback=lambda *a: {},
             init=Image.new("RGB", (64, 64)))  # fmt: skip


def test_kontext_with_a_reference_picture_is_refused_before_any_step(flux_generator: Generator) -> None:
    """FLUX.1 Kontext takes one picture (``max_images`` 1): a further one is refused by name, even
    when the engine holds every picture, before the model is touched."""
    reference = flux_generator.inputs.put(picture(25, (64, 64)))
    recipe = replace(with_input(flux_generator, KONTEXT, picture(26, (80, 64))), references=(reference,))
    steps: list[int] = []
    with pytest.raises(EngineError, match="FLUX.1 Kontext takes one picture, the one it edits, and no reference"):
        flux_generator.run(recipe, on_step=lambda step, total: steps.append(step))
    assert steps == []


@pytest.fixture
def kontext_takes_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kontext's variant as an edit model that takes a reference beside its picture (Qwen-Image-
    Edit-2509 does, three in all): the engine's path for references, on the tiny FLUX.1 build."""
    from engine import arch

    spec = arch.get("flux")
    assert spec is not None
    monkeypatch.setitem(spec.variants, "kontext", replace(spec.variants["kontext"], max_images=2))


def test_an_edit_loads_every_reference_and_hands_them_on_as_sent(
    flux_generator: Generator, kontext_takes_two: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.arch.flux.pipeline import FluxRuntime

    seen: list[list[tuple[int, int]]] = []
    real_edit = FluxRuntime.edit

    def spy(self: FluxRuntime, pipe: object, **kwargs: object) -> object:
        seen.append([image.size for image in kwargs["images"]])  # type: ignore[attr-defined]
        return real_edit(self, pipe, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(FluxRuntime, "edit", spy)
    reference = picture(27, (48, 96))
    recipe = replace(with_input(flux_generator, KONTEXT, picture(28, (96, 64))),
                     references=(hashlib.sha256(reference).hexdigest(),))  # fmt: skip
    # Not sent: refused by name before any step.
    with pytest.raises(EngineError, match=r"the reference picture [0-9a-f]{12}… was not sent to this engine"):
        flux_generator.run(recipe)
    assert seen == []
    flux_generator.inputs.put(reference)
    out = flux_generator.run(recipe).images[0]
    # The edited picture fitted to the recipe's size; the reference as it came (the model sizes it).
    assert seen == [[(80, 64), (48, 96)]]
    assert Image.open(io.BytesIO(out)).size == (80, 64)


def test_the_edit_call_itself_refuses_more_pictures_than_the_model_takes() -> None:
    """engine.picture_run.edit holds the same rule for a direct caller: Kontext reads one picture;
    and every reference the recipe names must have arrived."""
    from types import SimpleNamespace

    from engine.picture_run import edit

    calls: list[object] = []
    runtime = SimpleNamespace(architecture="flux", edit=lambda *a, **k: calls.append(k))
    start, other = Image.new("RGB", (80, 64)), Image.new("RGB", (32, 32))
    recipe = replace(KONTEXT, init_image="0" * 64, references=("1" * 64,))
    kwargs = {"conditioning": None, "latents": None, "generators": [], "callback": lambda *a: {}}
    with pytest.raises(EngineError, match="FLUX.1 Kontext takes one picture"):
        edit(runtime, None, recipe=recipe, init=start, references=[other], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(EngineError, match="reference pictures were not all sent"):
        edit(runtime, None, recipe=recipe, init=start, references=[], **kwargs)  # type: ignore[arg-type]
    assert calls == []


def test_a_kontext_diffusers_folder_loads_and_edits(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A folder whose ``model_index.json`` names ``FluxKontextPipeline`` is an edit model that runs
    (its components are FluxPipeline's), no longer refused as "not text-to-image"."""
    import json

    from sandbox.flux_builder import build_components, save_diffusers_folder

    root = tmp_path_factory.mktemp("kontext-folder")
    folder = save_diffusers_folder(build_components("dev", seed=3), root / "models" / "kontext", "dev")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxKontextPipeline"}))
    (root / "loras").mkdir()
    generator = Generator(root / "models", root / "loras")
    recipe = with_input(generator, replace(KONTEXT, model="kontext", steps=2), picture(25, (96, 64)))
    assert Image.open(io.BytesIO(generator.run(recipe).images[0])).size == (80, 64)
