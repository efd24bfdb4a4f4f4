"""FLUX.1 through the generator (issue 18): the runtime the engine asks, shared component files,
the memory plan, Forge's prompt weighting on T5, and LoRA cost counted per step."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from engine import arch
from engine.arch.flux.pipeline import COMPONENTS_FOLDER, FluxPromptEncoder, memory_plan
from engine.arch.runtime import Runtime
from engine.generate import Generator
from engine.protocol import EngineError, ErrorCode, LoraRef, Recipe
from sandbox.flux_builder import FluxBuild, build_flux, write_kohya_lora

GIB = 1 << 30
#: FLUX.1 dev's transformer (11.9 B weights) at 2 bytes, and CLIP-L + T5-XXL in bf16.
FLUX_DEV_BF16 = 23_800_000_000
TEXT_ENCODERS = 9_800_000_000


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, FluxBuild]:
    root = tmp_path_factory.mktemp("flux-runtime")
    dev = build_flux(root / "dev", "dev", seed=3)
    schnell = build_flux(root / "schnell", "schnell", seed=4)
    models, loras = root / "models", root / "loras"
    (models / COMPONENTS_FOLDER).mkdir(parents=True)
    loras.mkdir()
    for part in (dev.vae, dev.clip_l, dev.t5):
        shutil.copy(part, models / COMPONENTS_FOLDER / part.name)
    shutil.copy(dev.transformer, models / "flux1-dev.safetensors")
    shutil.copy(schnell.transformer, models / "flux1-schnell.safetensors")
    write_kohya_lora(dev.transformer, loras / "a.safetensors", seed=1, clip_l=dev.clip_l)
    write_kohya_lora(dev.transformer, loras / "b.safetensors", seed=2)
    return models, loras, dev


@pytest.fixture(scope="module")
def generator(folders: tuple[Path, Path, FluxBuild]) -> Generator:
    models, loras, _ = folders
    return Generator(models, loras)


def recipe(model: str = "flux1-dev.safetensors", **changes: object) -> Recipe:
    base = Recipe(model=model, prompt="a lighthouse", width=64, height=64, steps=2, sampler="Euler",
                  cfg_scale=3.5, seed=5)  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def test_the_flux_runtime_is_a_runtime() -> None:
    runtime = arch.runtime_of("flux")
    assert isinstance(runtime, Runtime)
    assert runtime.positions(recipe(width=1024, height=1024)) == 64 * 64  # packed 16-pixel tokens
    assert runtime.rows_per_image(recipe(cfg_scale=7.0)) == 1


@pytest.mark.parametrize(
    ("device", "budget", "transformer", "file_storage", "fp8", "expected"),
    [
        # an 80 GB card: everything on it, in bf16
        ("cuda", int(80 * GIB * 0.7), FLUX_DEV_BF16, "bfloat16", "auto", ("device", "bfloat16")),
        # a 24 GB card: bf16 does not fit, fp8 does, and T5 goes to the CPU beside it
        ("cuda", int(24 * GIB * 0.7), FLUX_DEV_BF16, "bfloat16", "auto", ("cpu", "float8_e4m3fn")),
        # a 16 GB card: the same choice (fp8 is the smallest storage offered)
        ("cuda", int(16 * GIB * 0.7), FLUX_DEV_BF16, "bfloat16", "auto", ("cpu", "float8_e4m3fn")),
        # an fp8 file stays fp8 even where bf16 would fit; "off" keeps 16 bits
        ("cuda", int(80 * GIB * 0.7), FLUX_DEV_BF16, "float8_e4m3fn", "auto", ("device", "float8_e4m3fn")),
        ("cuda", int(24 * GIB * 0.7), FLUX_DEV_BF16, "bfloat16", "off", ("cpu", "bfloat16")),
        ("cuda", int(80 * GIB * 0.7), FLUX_DEV_BF16, "bfloat16", "on", ("device", "float8_e4m3fn")),
        # a CPU: one memory, the load dtype unless the file is fp8
        ("cpu", 64 * GIB, FLUX_DEV_BF16, "bfloat16", "auto", ("device", "bfloat16")),
        ("cpu", 64 * GIB, FLUX_DEV_BF16, "float8_e4m3fn", "auto", ("device", "float8_e4m3fn")),
    ],
)
def test_memory_plan_is_chosen_from_the_device_budget(device, budget, transformer, file_storage, fp8, expected) -> None:
    plan = memory_plan(device=device, budget=budget, transformer_bytes=transformer,
                       text_encoder_bytes=TEXT_ENCODERS, file_storage=file_storage, dtype="bfloat16", fp8=fp8)  # fmt: skip
    assert (plan.text_encoders, plan.transformer_storage) == expected, plan.reason
    assert plan.reason


def test_memory_plan_refuses_an_unknown_fp8_setting() -> None:
    with pytest.raises(ValueError, match="auto, on or off"):
        memory_plan(device="cpu", budget=None, transformer_bytes=1, text_encoder_bytes=1,
                    file_storage="bfloat16", dtype="float32", fp8="sometimes")  # fmt: skip


def test_components_are_loaded_once_and_counted_once(generator: Generator) -> None:
    generator.run(recipe())
    generator.run(recipe("flux1-schnell.safetensors", cfg_scale=1.0))
    dev, schnell = (e for e in generator.models.entries.values())
    for part in ("vae", "text_encoder", "text_encoder_2"):
        assert getattr(dev.pipe, part) is getattr(schnell.pipe, part), part
    assert dev.pipe.transformer is not schnell.pipe.transformer
    shared = {key: size for entry in (dev, schnell) for key, size in entry.shared.items()}
    assert len(shared) == 3 and dev.shared == schnell.shared
    assert generator.models.used("device") == dev.size_bytes + schnell.size_bytes + sum(shared.values())
    transformer = sum(t.numel() * t.element_size() for t in dev.pipe.transformer.parameters())
    assert dev.size_bytes == transformer + sum(t.numel() * t.element_size() for t in dev.pipe.transformer.buffers())
    health = generator.health()
    assert health["memory_plan"]["text_encoders"] == "device"


def test_missing_components_are_named_with_where_to_put_them(tmp_path: Path, folders) -> None:
    _, _, dev = folders
    (tmp_path / "models").mkdir()
    shutil.copy(dev.transformer, tmp_path / "models" / "flux1-dev.safetensors")
    lonely = Generator(tmp_path / "models", tmp_path)
    with pytest.raises(EngineError) as caught:
        lonely.run(recipe())
    assert caught.value.code is ErrorCode.UNKNOWN_FILE
    assert "flux-components/" in str(caught.value) and "t5xxl*.safetensors" in str(caught.value)


def _pipe(generator: Generator):
    generator.run(recipe())
    entry = next(e for e in generator.models.entries.values() if e.file == "flux1-dev.safetensors")
    return entry.pipe


def test_emphasis_weights_t5_tokens_without_brackets_as_forge_does(generator: Generator) -> None:
    pipe = _pipe(generator)
    encoder = FluxPromptEncoder(pipe, 512)
    plain_ids, plain_weights, _ = encoder._t5_tokens([("a red lighthouse", 1.0)])
    from engine.prompting.attention import parse_attention

    weighted_ids, weights, _ = encoder._t5_tokens(parse_attention("a (red:1.5) lighthouse"))
    # No bracket, colon or number reaches T5 as text: the same token ids as the plain prompt...
    assert weighted_ids == plain_ids
    assert set(plain_weights) == {1.0} and 1.5 in weights
    # ...and the unweighted prompt is exactly what FluxPipeline itself encodes.
    hidden, pooled, info = encoder.encode("a red lighthouse")
    with torch.inference_mode():
        reference, reference_pooled, _ = pipe.encode_prompt(prompt="a red lighthouse", prompt_2=None,
                                                            max_sequence_length=512)  # fmt: skip
    assert torch.allclose(hidden, reference.float(), atol=1e-5)
    assert torch.allclose(pooled, reference_pooled.float(), atol=1e-5)
    emphasised, same_pooled, _ = encoder.encode("a (red:1.5) lighthouse")
    assert not torch.allclose(emphasised, hidden)
    assert torch.allclose(emphasised.mean(), hidden.mean(), atol=1e-5)  # "Original": mean restored
    assert torch.equal(same_pooled, pooled)  # CLIP-L reads the plain text


def test_long_prompts_reach_t5_whole_up_to_the_budget(generator: Generator) -> None:
    pipe = _pipe(generator)
    prompt = "a lighthouse on a cliff above a stormy sea with gulls " * 16  # ~320 T5 tokens
    _, _, info = FluxPromptEncoder(pipe, 512).encode(prompt)
    assert 300 < info.tokens <= 512
    ids, _, used = FluxPromptEncoder(pipe, 256)._t5_tokens([(prompt, 1.0)])  # schnell's budget
    assert len(ids) == 256 and ids[-1] == 1 and used > 256  # cut at 256 with its end token, not at 77


def test_prompt_encodings_are_cached_per_lora_state(generator: Generator) -> None:
    pipe = _pipe(generator)
    encoder = FluxPromptEncoder(pipe, 512)
    first = encoder.encode("a cached prompt")
    assert encoder.encode("a cached prompt") is first
    pipe._atelier_lora_state = ("patched", (("x", 1.0),))
    try:
        assert encoder.encode("a cached prompt") is not first
    finally:
        pipe._atelier_lora_state = ("patched", ())


def test_clip_skip_and_embeddings_are_refused_with_the_reason(generator: Generator) -> None:
    runtime = arch.runtime_of("flux")
    pipe = _pipe(generator)
    with pytest.raises(EngineError, match="clip skip 2 does not apply to FLUX.1"):
        runtime.prompt_encoder(pipe, clip_skip=2, embeddings={})
    with pytest.raises(EngineError, match="embeddings do not apply to FLUX.1"):
        runtime.prompt_encoder(pipe, clip_skip=1, embeddings={"easynegative": {}})


def _pixels(png: bytes) -> bytes:
    import io

    from PIL import Image

    return Image.open(io.BytesIO(png)).tobytes()


def test_a_two_lora_stack_changes_the_image_and_restores_exactly(generator: Generator) -> None:
    plain = _pixels(generator.run(recipe(seed=9)).images[0])
    stacked = recipe(seed=9, loras=(LoraRef("a.safetensors", 0.8), LoraRef("b.safetensors", 0.5)))
    assert _pixels(generator.run(stacked).images[0]) != plain
    assert _pixels(generator.run(recipe(seed=9, loras=(LoraRef("a.safetensors", 0.0),))).images[0]) == plain
    assert _pixels(generator.run(recipe(seed=9)).images[0]) == plain


def test_transformer_lora_layers_count_as_per_step_work(generator: Generator) -> None:
    """The cost model scales a denoiser layer's positions with the image; FLUX's denoiser is
    the transformer (it used to count only "unet" layers, so a FLUX LoRA looked free per step)."""
    generator.run(recipe(loras=(LoraRef("a.safetensors", 1.0),)))
    entry = next(e for e in generator.models.entries.values() if e.file == "flux1-dev.safetensors")
    patcher = entry.patcher
    small, large = patcher.positions_for(16, 1), patcher.positions_for(64, 1)
    assert small is not None and large is not None
    layers = {id(layer.module): layer.component for layer in patcher.index.layers()}
    transformer = [m for m, c in layers.items() if c == "transformer" and m in small and small[m] > 0]
    encoders = [m for m, c in layers.items() if c.startswith("text_encoder") and m in small and small[m] > 0]
    assert transformer and encoders
    assert all(large[m] == pytest.approx(4 * small[m]) for m in transformer)
    assert all(large[m] == small[m] for m in encoders)  # once per prompt, not per step


def test_a_diffusers_folder_tells_dev_from_schnell(folders) -> None:
    """FluxPipeline is the class of both: the transformer's tensors (guidance embedding) tell."""
    from engine.inspect import inspect_file

    models, _, dev = folders
    schnell = models.parent / "schnell" / "flux-schnell-diffusers"
    found = {path.name: inspect_file(path) for path in (dev.folder, schnell)}
    assert {name: (i.architecture, i.variant, i.cannot_run) for name, i in found.items()} == {
        "flux-dev-diffusers": ("flux", "dev", None),
        "flux-schnell-diffusers": ("flux", "schnell", None),
    }


def test_break_is_a_space_for_t5(generator: Generator) -> None:
    pipe = _pipe(generator)
    encoder = FluxPromptEncoder(pipe, 512)
    with_break, _, _ = encoder.encode("red sky BREAK calm sea")
    assert torch.equal(with_break, encoder.encode("red sky calm sea")[0])
    assert not torch.equal(with_break, encoder.encode("red skycalm sea")[0])


def test_fp8_on_request_stores_linear_weights_in_fp8_and_still_renders(folders) -> None:
    models, loras, _ = folders
    fp8 = Generator(models, loras, fp8="on")
    image = fp8.run(recipe(seed=2)).images[0]
    assert image.startswith(b"\x89PNG")
    pipe = fp8.current.pipe  # type: ignore[union-attr]
    linear = [m for m in pipe.transformer.modules() if isinstance(m, torch.nn.Linear)]
    assert linear and all(m.weight.dtype == torch.float8_e4m3fn for m in linear)
    assert fp8.health()["memory_plan"]["transformer_storage"] == "float8_e4m3fn"
    with pytest.raises(ValueError, match="auto, on or off"):
        Generator(models, loras, fp8="maybe")


def test_an_fp8_file_stays_fp8_and_renders_in_the_engine_dtype(folders, tmp_path: Path) -> None:
    """An fp8 e4m3fn transformer file (as published) renders beside 32-bit VAE and encoders:
    its linear weights stay fp8, everything else follows the engine's dtype."""
    models, loras, _ = folders
    built = build_flux(tmp_path / "fp8", "dev", seed=3, dtype="fp8")
    shutil.copy(built.transformer, models / "flux1-dev-fp8.safetensors")
    try:
        generator = Generator(models, loras)
        assert generator.run(recipe("flux1-dev-fp8.safetensors")).images[0].startswith(b"\x89PNG")
        transformer = generator.current.pipe.transformer  # type: ignore[union-attr]
        assert {p.dtype for p in transformer.parameters()} == {torch.float8_e4m3fn, torch.float32}
        assert generator.health()["memory_plan"]["transformer_storage"] == "float8_e4m3fn"
    finally:
        (models / "flux1-dev-fp8.safetensors").unlink()
