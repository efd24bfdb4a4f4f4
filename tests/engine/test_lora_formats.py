"""Every LoRA format of issue 9, made offline in its real layout, applied with the reference maths.

For each format, on the tiny SD 1.5 and SDXL models: the merged weight of every layer the file
names equals W + w·ΔW with ΔW computed here from the file's tensors by the reference formula
(written the way ComfyUI/A1111 compute it, independently of the engine's code), the image
differs from weight 0, and weight 0 is the base image bit for bit. The same maths is checked
on real SD 1.5 layer shapes (320-channel convs, 768-wide cross-attention, CLIP-L).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from engine.generate import Generator
from engine.protocol import EngineError, ErrorCode, LoraRef, Recipe
from tests.engine import lora_formats as lf
from tests.engine._images import mean_abs_diff, pixels

RECIPES = {
    "sd15": Recipe(model="sd15-tiny.safetensors", prompt="a red fox", steps=3, width=64, height=64, seed=3),
    "sdxl": Recipe(model="sdxl-tiny", prompt="a red fox", steps=3, width=64, height=64, seed=3),
}
WEIGHT = 0.8

#: name -> (writer, the engine's format label(s), its key layout)
FORMATS: dict[str, tuple[Any, set[str], str]] = {
    "kohya-lora-fp16": (lambda p, a, t: lf.write_kohya(p, a, t, seed=11, locon=False), {"lora"}, "kohya"),
    "kohya-lora-bf16": (lambda p, a, t: lf.write_kohya(p, a, t, seed=12, locon=False, dtype=torch.bfloat16), {"lora"}, "kohya"),
    "kohya-locon": (lambda p, a, t: lf.write_kohya(p, a, t, seed=13), {"lora", "locon"}, "kohya"),
    "lycoris-locon": (lambda p, a, t: lf.write_kohya(p, a, t, seed=14, lycoris=True), {"lora", "locon"}, "kohya"),
    "lycoris-locon-tucker": (lambda p, a, t: lf.write_kohya(p, a, t, seed=15, lycoris=True, tucker=True), {"lora", "locon"}, "kohya"),
    "onetrainer-default": (lambda p, a, t: lf.write_kohya(p, a, t, seed=16, sgm=False), {"lora", "locon"}, "kohya"),
    "loha": (lambda p, a, t: lf.write_loha(p, a, t, seed=17), {"loha"}, "kohya"),
    "loha-tucker": (lambda p, a, t: lf.write_loha(p, a, t, seed=18, tucker=True), {"loha"}, "kohya"),
    "lokr": (lambda p, a, t: lf.write_lokr(p, a, t, seed=19), {"lokr"}, "kohya"),
    "lokr-full": (lambda p, a, t: lf.write_lokr(p, a, t, seed=20, full=True), {"lokr"}, "kohya"),
    "full-diff": (lambda p, a, t: lf.write_full(p, a, t, seed=21), {"full"}, "kohya"),
    "ia3": (lambda p, a, t: lf.write_ia3(p, a, t, seed=22), {"ia3"}, "kohya"),
    "dora-out-axis": (lambda p, a, t: lf.write_kohya(p, a, t, seed=23, lycoris=True, dora="out"), {"dora+lora", "dora+locon"}, "kohya"),
    "dora-in-axis": (lambda p, a, t: lf.write_kohya(p, a, t, seed=24, lycoris=True, dora="in"), {"dora+lora", "dora+locon"}, "kohya"),
    "diffusers": (lambda p, a, t: lf.write_diffusers(p, a, t, seed=25), {"lora"}, "diffusers"),
    "diffusers-old": (lambda p, a, t: lf.write_diffusers(p, a, t, seed=26, old=True), {"lora"}, "diffusers_old"),
    "peft": (lambda p, a, t: lf.write_diffusers(p, a, t, seed=27, peft=True), {"lora"}, "peft"),
    "omi": (lambda p, a, t: lf.write_omi(p, a, t, seed=28), {"lora", "locon"}, "omi"),
}  # fmt: skip


# --- the reference formulas (as ComfyUI's comfy/weight_adapter and A1111's networks write them)


def _scale(roles: dict[str, torch.Tensor], rank: int) -> float:
    return float(roles["alpha"]) / rank if "alpha" in roles else 1.0


def reference_delta(roles: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """ΔW at strength 1 for one layer, from the file's tensors."""
    r = {k: v.float() for k, v in roles.items()}
    w = weight.float()
    if "dora_scale" in r:
        inner = reference_delta({k: v for k, v in roles.items() if k != "dora_scale"}, weight)
        merged = w + inner
        m = r["dora_scale"]
        if m.shape[0] == w.shape[0] and m.shape[0] != 1:  # one norm per output row
            norm = merged.reshape(w.shape[0], -1).norm(dim=1, keepdim=True)
            norm = norm.reshape(w.shape[0], *[1] * (w.dim() - 1))
        else:  # A1111 apply_weight_decompose: one norm per input column
            norm = merged.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1, keepdim=True)
            norm = norm.reshape(w.shape[1], *[1] * (w.dim() - 1)).transpose(0, 1)
        return merged * (m / (norm + torch.finfo(torch.float32).eps)) - w
    if "down" in r:
        down, up = r["down"], r["up"]
        rank = down.shape[0]
        if "mid" in r:  # ComfyUI's lora_mid rebuild
            mid = r["mid"]
            shape = [down.shape[1], down.shape[0], mid.shape[2], mid.shape[3]]
            down = torch.mm(down.transpose(0, 1).flatten(1), mid.transpose(0, 1).flatten(1))
            down = down.reshape(shape).transpose(0, 1)
        return (up.flatten(1) @ down.flatten(1)).reshape(w.shape) * _scale(r, rank)
    if "hada_w1_a" in r:
        rank = r["hada_w1_b"].shape[0]
        if "hada_t1" in r:
            m1 = torch.einsum("i j k l, j r, i p -> p r k l", r["hada_t1"], r["hada_w1_b"], r["hada_w1_a"])
            m2 = torch.einsum("i j k l, j r, i p -> p r k l", r["hada_t2"], r["hada_w2_b"], r["hada_w2_a"])
        else:
            m1 = r["hada_w1_a"] @ r["hada_w1_b"]
            m2 = r["hada_w2_a"] @ r["hada_w2_b"]
        return (m1 * m2).reshape(w.shape) * _scale(r, rank)
    if "lokr_w1" in r or "lokr_w1_a" in r:
        w1 = r["lokr_w1"] if "lokr_w1" in r else r["lokr_w1_a"] @ r["lokr_w1_b"]
        w2 = r["lokr_w2"] if "lokr_w2" in r else r["lokr_w2_a"] @ r["lokr_w2_b"].flatten(1)
        dim = r["lokr_w1_b"].shape[0] if "lokr_w1_a" in r else (r["lokr_w2_b"].shape[0] if "lokr_w2_a" in r else None)
        scale = float(r["alpha"]) / dim if ("alpha" in r and dim is not None) else 1.0
        if w2.dim() == 4:
            w1 = w1.unsqueeze(2).unsqueeze(2)
        return torch.kron(w1, w2).reshape(w.shape) * scale
    if "diff" in r:
        return r["diff"].reshape(w.shape)
    if "ia3" in r:
        vector = r["ia3"].reshape(-1)
        return w * vector.reshape(-1, *[1] * (w.dim() - 1))
    raise AssertionError(f"no reference formula for roles {sorted(r)}")


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def format_files(demo_assets, tmp_path_factory) -> dict[str, Any]:
    """Every format for both architectures, written against the tiny models' own layers."""
    root = tmp_path_factory.mktemp("format-loras")
    generator = Generator(demo_assets.model_root, root, lora_mode="patched")
    written: dict[str, Any] = {"root": root, "generator": generator, "layers": {}, "base": {}, "clean": {}}
    for arch, recipe in RECIPES.items():
        written["base"][arch] = pixels(generator.run(recipe).images[0])
        pipe = generator.current.pipe
        chosen = lf.targets(pipe)
        written["clean"][arch] = {
            t: dict(getattr(pipe, t.component).named_modules())[t.name].weight.detach().clone() for t in chosen
        }
        (root / arch).mkdir()
        for name, (writer, _labels, _layout) in FORMATS.items():
            written["layers"][(arch, name)] = writer(root / arch / f"{name}.safetensors", arch, chosen)
    return written


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
@pytest.mark.parametrize("name", list(FORMATS))
def test_format_applies_with_the_reference_maths(format_files, arch: str, name: str) -> None:
    generator: Generator = format_files["generator"]
    file = f"{arch}/{name}.safetensors"
    recipe = RECIPES[arch]
    zero = generator.run(dataclasses.replace(recipe, loras=(LoraRef(file, 0.0),)))
    assert np.array_equal(pixels(zero.images[0]), format_files["base"][arch]), "weight 0 is not the base image"
    result = generator.run(dataclasses.replace(recipe, loras=(LoraRef(file, WEIGHT),)))
    assert mean_abs_diff(zero.images[0], result.images[0]) > 0.5, "the LoRA did not change the image"
    pipe = generator.current.pipe
    sha = generator.inspect(format_files["root"] / file).sha256
    parsed = generator.loras.entries[sha].lora
    _writer, labels, layout = FORMATS[name]
    assert set(parsed.formats) <= labels and parsed.formats, parsed.formats
    assert parsed.layout == layout
    layers = format_files["layers"][(arch, name)]
    assert layers, "the writer wrote no layer"
    for target, roles in layers.items():
        module = dict(getattr(pipe, target.component).named_modules())[target.name]
        clean = format_files["clean"][arch][target]
        expected = clean + WEIGHT * reference_delta(roles, clean)
        assert torch.allclose(module.weight, expected, atol=2e-5, rtol=1e-4), (
            target.name, (module.weight - expected).abs().max().item())
        if "diff_b" in roles:
            assert module.bias is not None
    assert generator.current.patcher.applied[0] == "patched"


def test_full_diff_also_moves_the_bias(format_files) -> None:
    generator: Generator = format_files["generator"]
    recipe = RECIPES["sd15"]
    generator.run(recipe)
    pipe = generator.current.pipe
    layers = format_files["layers"][("sd15", "full-diff")]
    target = next(t for t in layers if t.component == "unet" and "diff_b" in layers[t])
    module = dict(pipe.unet.named_modules())[target.name]
    bias = module.bias.detach().clone()
    generator.run(dataclasses.replace(recipe, loras=(LoraRef("sd15/full-diff.safetensors", WEIGHT),)))
    assert torch.allclose(module.bias, bias + WEIGHT * layers[target]["diff_b"].float(), atol=1e-6)
    generator.run(recipe)
    assert torch.equal(module.bias, bias)  # restored exactly


def test_dora_scale_is_not_dropped(format_files) -> None:
    """The same LoRA with and without its dora_scale gives other weights and another image."""
    generator: Generator = format_files["generator"]
    root: Path = format_files["root"]
    from safetensors.torch import load_file, save_file

    state = load_file(str(root / "sd15/dora-in-axis.safetensors"))
    save_file({k: v for k, v in state.items() if not k.endswith(".dora_scale")}, str(root / "sd15/dora-stripped.safetensors"))
    recipe = RECIPES["sd15"]
    with_dora = generator.run(dataclasses.replace(recipe, loras=(LoraRef("sd15/dora-in-axis.safetensors", 1.0),)))
    without = generator.run(dataclasses.replace(recipe, loras=(LoraRef("sd15/dora-stripped.safetensors", 1.0),)))
    assert mean_abs_diff(with_dora.images[0], without.images[0]) > 0.5


def test_bundled_embeddings_are_read_and_the_lora_part_applied(format_files, demo_assets) -> None:
    generator: Generator = format_files["generator"]
    root: Path = format_files["root"]
    recipe = RECIPES["sdxl"]
    generator.run(recipe)
    chosen = lf.targets(generator.current.pipe)
    bundle = {"nova.clip_l": torch.randn(2, 32, dtype=torch.float16), "nova.clip_g": torch.randn(2, 64, dtype=torch.float16)}
    lf.write_omi(root / "sdxl/omi-bundle.safetensors", "sdxl", chosen, seed=30, bundle=bundle)
    result = generator.run(dataclasses.replace(recipe, loras=(LoraRef("sdxl/omi-bundle.safetensors", 1.0),)))
    assert mean_abs_diff(result.images[0], generator.run(recipe).images[0]) > 0.5
    parsed = next(e.lora for e in generator.loras.entries.values() if e.file == "sdxl/omi-bundle.safetensors")
    assert set(parsed.embeddings) == {"nova"} and set(parsed.embeddings["nova"]) == {"clip_l", "clip_g"}


def test_a_format_the_engine_cannot_apply_is_named_not_corrupt(format_files) -> None:
    generator: Generator = format_files["generator"]
    root: Path = format_files["root"]
    from safetensors.torch import save_file

    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{key}.oft_blocks": torch.zeros(4, 8, 8), f"{key}.alpha": torch.tensor(1.0)},
              str(root / "sd15/oft.safetensors"))  # fmt: skip
    with pytest.raises(EngineError) as caught:
        generator.run(dataclasses.replace(RECIPES["sd15"], loras=(LoraRef("sd15/oft.safetensors", 1.0),)))
    assert caught.value.code is ErrorCode.UNSUPPORTED_FORMAT
    assert "OFT" in caught.value.message


# --- real SD 1.5 layer shapes ----------------------------------------------------------------

_REAL_SHAPES = {
    ("unet", "down_blocks.0.resnets.0.conv1"): (320, 320, 3, 3),
    ("unet", "down_blocks.0.attentions.0.proj_in"): (320, 320, 1, 1),
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"): (320, 320),
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"): (320, 768),
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2"): (320, 1280),
    ("unet", "mid_block.resnets.0.time_emb_proj"): (1280, 1280),
    ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj"): (768, 768),
}


def _real_shaped_model() -> SimpleNamespace:
    """Modules with SD 1.5's real layer shapes under their real names (no full model needed)."""
    roots = {"unet": torch.nn.Module(), "text_encoder": torch.nn.Module()}
    generator = torch.Generator().manual_seed(0)
    for (component, name), shape in _REAL_SHAPES.items():
        node = roots[component]
        *parents, leaf = name.split(".")
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        if len(shape) == 4:
            layer = torch.nn.Conv2d(shape[1], shape[0], shape[2], padding=shape[2] // 2)
        else:
            layer = torch.nn.Linear(shape[1], shape[0])
        with torch.no_grad():
            layer.weight.copy_(torch.randn(shape, generator=generator) * 0.05)
        node.add_module(leaf, layer)
    return SimpleNamespace(**roots)


@pytest.mark.parametrize(
    "name", ["kohya-locon", "lycoris-locon-tucker", "loha", "loha-tucker", "lokr", "lokr-full",
             "full-diff", "ia3", "dora-out-axis", "dora-in-axis"],
)  # fmt: skip
def test_real_layer_shapes(tmp_path, name: str) -> None:
    from engine.loras.reader import bind, read_lora_file
    from engine.patcher import StackEntry, WeightPatcher

    model = _real_shaped_model()
    chosen = [lf.Target(c, n, tuple(s), None) for (c, n), s in _REAL_SHAPES.items()]
    writer = FORMATS[name][0]
    layers = writer(tmp_path / "real.safetensors", "sd15", chosen)
    clean = {t: dict(getattr(model, t.component).named_modules())[t.name].weight.detach().clone() for t in chosen}
    parsed = read_lora_file(tmp_path / "real.safetensors", label=name, sha256="1" * 64)
    patcher = WeightPatcher(model)
    bound = bind(parsed, patcher.index, model_name="real", model_arch="sd15")
    patcher.apply([StackEntry(bound, WEIGHT)])
    for target, roles in layers.items():
        module = dict(getattr(model, target.component).named_modules())[target.name]
        expected = clean[target] + WEIGHT * reference_delta(roles, clean[target])
        tolerance = 1e-4 * max(1.0, math.sqrt(clean[target][0].numel()) / 30)
        assert torch.allclose(module.weight, expected, atol=tolerance, rtol=1e-4), (
            target.name, (module.weight - expected).abs().max().item())
    patcher.restore_all()
    for target in layers:
        module = dict(getattr(model, target.component).named_modules())[target.name]
        assert torch.equal(module.weight, clean[target])


# --- a file written by diffusers itself, checked against diffusers' own fuse ---------------


def _diffusers_pipeline(pipe: Any) -> Any:
    """A plain diffusers StableDiffusionPipeline on copies of the engine's clean components."""
    import copy

    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=copy.deepcopy(pipe.vae), text_encoder=copy.deepcopy(pipe.text_encoder), tokenizer=pipe.tokenizer,
        unet=copy.deepcopy(pipe.unet), scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip


def _save_with_diffusers(pipe: Any, path: Path) -> None:
    """Train-script style: a PEFT adapter on the UNet (r=4, lora_alpha=2) with random B, saved by
    ``save_lora_weights`` with the metadata diffusers' training scripts pass
    (``_collate_lora_metadata``), so the file is exactly what diffusers writes. (Text-encoder
    adapters go through transformers, which wants a newer PEFT than the one installed; the
    metadata for them is the same, prefixed ``text_encoder.``, and the format tests cover it.)"""
    from diffusers.training_utils import _collate_lora_metadata
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    trainer = _diffusers_pipeline(pipe)
    trainer.unet.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(40)
    with torch.no_grad():
        for param_name, param in trainer.unet.named_parameters():
            if "lora_B" in param_name:  # PEFT starts B at zero: a trained adapter has not
                param.copy_(torch.randn(param.shape, generator=g) * 0.2)
    type(trainer).save_lora_weights(
        path.parent,
        weight_name=path.name,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(trainer.unet)),
        **_collate_lora_metadata({"unet": trainer.unet}),
    )


@pytest.fixture(scope="module")
def diffusers_saved(format_files) -> Path:
    generator: Generator = format_files["generator"]
    generator.run(RECIPES["sd15"])
    path = format_files["root"] / "sd15/diffusers-saved.safetensors"
    _save_with_diffusers(generator.current.pipe, path)
    return path


def test_a_diffusers_saved_lora_changes_weights_as_diffusers_fuse_does(format_files, diffusers_saved: Path) -> None:
    """``save_lora_weights`` writes ``lora_adapter_metadata`` flat (``"unet.lora_alpha": 2``); the
    engine once read only a nested form, so alpha/r was never applied and an r=4, alpha=2 file
    changed every weight by exactly twice what diffusers' own load_lora_weights + fuse_lora do."""
    generator: Generator = format_files["generator"]
    recipe = RECIPES["sd15"]
    generator.run(recipe)
    pipe = generator.current.pipe
    clean = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}
    metadata = json.loads(safetensors_metadata(diffusers_saved)["lora_adapter_metadata"])
    assert (metadata["unet.r"], metadata["unet.lora_alpha"]) == (4, 2) and "unet" not in metadata

    reference = _diffusers_pipeline(pipe)
    reference.load_lora_weights(diffusers_saved.parent, weight_name=diffusers_saved.name)
    reference.fuse_lora(lora_scale=WEIGHT)
    reference.unload_lora_weights()  # keeps the fused weights, drops the PEFT wrappers
    theirs = reference.unet.state_dict()

    generator.run(dataclasses.replace(recipe, loras=(LoraRef(f"sd15/{diffusers_saved.name}", WEIGHT),)))
    ours = pipe.unet.state_dict()
    changed = 0
    for key, base in clean.items():
        expected = theirs[key] - base
        delta = ours[key] - base
        assert torch.allclose(delta, expected, atol=1e-6, rtol=1e-4), (key, (delta - expected).abs().max().item())
        changed += bool(expected.abs().max() > 1e-4)
    assert changed >= 8  # the adapter really moved q/k/v/out of several blocks


def test_inspection_and_the_engine_agree_on_a_diffusers_saved_alpha(format_files, diffusers_saved: Path) -> None:
    """The registry shows alpha 2 and rank 4 for the file; the engine applies exactly alpha/rank."""
    from engine.loras.reader import read_lora_file

    info = format_files["generator"].inspect(diffusers_saved)
    assert (info.key_format, info.rank, info.alpha) == ("diffusers", 4, 2.0)
    parsed = read_lora_file(diffusers_saved, label="diffusers-saved", sha256=info.sha256)
    scales = {getattr(delta, "scale", None) for delta in parsed.layers.values()}
    assert parsed.layers and scales == {info.alpha / info.rank}


def safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


@pytest.mark.parametrize("config", [{"unet.lora_alpha": "strong"}, {"unet.r": 0}, {"unet.alpha_pattern": ["to_q"]}])
def test_unreadable_adapter_metadata_is_a_clear_corrupt_file_error(format_files, config: dict[str, Any]) -> None:
    """Untrusted metadata now reaches the maths: a value PEFT could not use is refused by name."""
    from safetensors.torch import load_file, save_file

    generator: Generator = format_files["generator"]
    root: Path = format_files["root"]
    state = load_file(str(root / "sd15/diffusers.safetensors"))
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 2, **config})}
    save_file(state, str(root / "sd15/bad-metadata.safetensors"), metadata=metadata)
    with pytest.raises(EngineError) as caught:
        generator.run(dataclasses.replace(RECIPES["sd15"], loras=(LoraRef("sd15/bad-metadata.safetensors", 1.0),)))
    assert caught.value.code is ErrorCode.CORRUPT_FILE
    assert "lora_adapter_metadata" in caught.value.message and "save_lora_weights" in caught.value.message
