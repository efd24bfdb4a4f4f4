"""Running FLUX.2 Klein: diffusers' ``Flux2KleinPipeline`` with the authors' rules, seeded.

Decided here: distilled Klein (4B, 9B) runs 4 steps without guidance (one row per step, no
negative prompt); its base models run CFG with the negative prompt (``neg + s·(pos − neg)``,
the recipe's CFG as it is); the sampler is flow-matching Euler with FLUX.2's empirical,
resolution- and step-dependent shift; sizes in multiples of 16; the prompt goes through Qwen3's
chat template (thinking off), and three of its hidden layers (9, 18 and 27 of 36: a quarter,
half and three quarters of the depth) stacked are what the transformer reads, 512 tokens.

Single-file transformers find the Qwen3 file whose width fits them (4B: Qwen3-4B, which
Z-Image shares; 9B: Qwen3-8B), the tokenizer and the VAE folder in ``flux2-components/`` (the
text encoder and tokenizer also in ``zimage-components/``); each is loaded once for all models.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from engine.arch.flux.pipeline import (
    PROMPT_CACHE_MAX,
    FluxRuntime,
    _shared_component,
    _tensor_bytes,
    apply_memory_plan,
    cast_transformer,
    compute_dtype,
    memory_plan,
)
from engine.arch.runtime import LoraTarget
from engine.protocol import EngineError, ErrorCode

COMPONENTS_FOLDER = "flux2-components"
ZIMAGE_COMPONENTS = "zimage-components"
BUDGET = 512
SIZE_MULTIPLE = 16


def out_layers(text_encoder: Any) -> tuple[int, ...]:
    """The hidden layers stacked: (9, 18, 27) of Qwen3's 36, in proportion for a cut one."""
    depth = int(text_encoder.config.num_hidden_layers)
    return (depth // 4, depth // 2, 3 * depth // 4)


def find_components(model_root: Path | None, transformer: Path, text_width: int) -> dict[str, Path]:
    from engine.arch.flux2.loading import text_width as width_of

    roots = [r for r in (model_root, transformer.parent) if r is not None]
    own = [r / COMPONENTS_FOLDER for r in roots if (r / COMPONENTS_FOLDER).is_dir()]
    shared = own + [r / ZIMAGE_COMPONENTS for r in roots if (r / ZIMAGE_COMPONENTS).is_dir()]
    found: dict[str, Path] = {}
    for folder in own:
        if (folder / "vae" / "config.json").is_file():
            found["vae"] = folder / "vae"
            break
    if "vae" not in found:  # BFL's single file, told apart by its header
        from engine.arch.components import FLUX2_VAE, find_component
        from engine.inspect import header_shapes

        if (file := find_component(own, FLUX2_VAE, header_shapes)) is not None:
            found["vae"] = file
    for folder in shared:
        if "tokenizer" not in found and (folder / "tokenizer" / "tokenizer.json").is_file():
            found["tokenizer"] = folder / "tokenizer"
        for candidate in sorted(folder.glob("qwen*.safetensors")):
            if "text_encoder" not in found and width_of(candidate) == text_width:
                found["text_encoder"] = candidate
    wanted = {"vae": "vae/ (the FLUX.2 repository's VAE folder) or BFL's flux2-vae.safetensors", "tokenizer": "tokenizer/ (Qwen3's)",
              "text_encoder": f"a qwen*.safetensors Qwen3 file {text_width} wide "
                              f"({'qwen_3_4b' if text_width == 2560 else 'qwen_3_8b'}.safetensors)"}  # fmt: skip
    missing = [text for name, text in wanted.items() if name not in found]
    if missing:
        raise EngineError(ErrorCode.UNKNOWN_FILE, f"'{transformer.name}' is a FLUX.2 transformer without its "
                          f"{', '.join(missing)}: put them in the models folder's '{COMPONENTS_FOLDER}/' (the "
                          f"text encoder and tokenizer may be Z-Image's, in '{ZIMAGE_COMPONENTS}/'), or use the "
                          "diffusers folder")  # fmt: skip
    return found


def is_base(recipe: Any) -> bool:
    return str(getattr(recipe, "variant", "")).endswith("-base") or getattr(recipe, "variant", "") == "dev"


class Flux2PromptEncoder:
    """Prompts through Qwen3 as Flux2KleinPipeline reads them, cached per LoRA state."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        cache = getattr(pipe, "_atelier_prompt_cache", None)
        if cache is None:
            cache = pipe._atelier_prompt_cache = OrderedDict()
        self.cache: OrderedDict[Any, Any] = cache

    def encode(self, prompt: str) -> tuple[Any, Any]:
        import torch

        from engine.prompting.attention import is_break, parse_attention
        from engine.prompting.encode import PromptInfo

        key = (prompt, getattr(self.pipe, "_atelier_lora_state", None))
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
            return hit
        plain = "".join(" " if is_break(f) else f[0] for f in parse_attention(prompt)) if prompt else ""
        encoder, tokenizer = self.pipe.text_encoder, self.pipe.tokenizer
        with torch.inference_mode():
            embeds = self.pipe._get_qwen3_prompt_embeds(encoder, tokenizer, [plain], max_sequence_length=BUDGET,
                                                        hidden_states_layers=out_layers(encoder))  # fmt: skip
        text = tokenizer.apply_chat_template([{"role": "user", "content": plain}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False)  # fmt: skip
        used = min(BUDGET, len(tokenizer(text).input_ids))
        result = (embeds.float(), PromptInfo(tokens=used, chunks=1, embeddings_used=()))
        self.cache[key] = result
        while len(self.cache) > PROMPT_CACHE_MAX:
            self.cache.popitem(last=False)
        return result

    def conditioning(self, prompts: Sequence[str], negatives: Sequence[str], *, guidance: bool = False) -> Any:
        import torch

        from engine.prompting.encode import Conditioning

        transformer = self.pipe.transformer
        dtype, device = compute_dtype(transformer), transformer.device
        rows = [self.encode(p) for p in prompts]
        kwargs: dict[str, Any] = {"prompt_embeds": torch.cat([h for h, _ in rows]).to(device, dtype)}
        info = [i for _, i in rows]
        negative_info = [type(i)(0, 0, ()) for i in info]
        if guidance:
            negative_rows = [self.encode(n) for n in negatives]
            kwargs["negative_prompt_embeds"] = torch.cat([h for h, _ in negative_rows]).to(device, dtype)
            negative_info = [i for _, i in negative_rows]
        return Conditioning(kwargs=kwargs, negative_lengths=[], positive_lengths=[BUDGET] * len(rows), info=info,
                            negative_info=negative_info, guidance=guidance)  # fmt: skip


class Flux2Runtime:
    """FLUX.2 Klein (distilled and base) behind :class:`engine.arch.runtime.Runtime`."""

    architecture = "flux2"

    def load(self, path: Path, *, device: str, dtype: str, model_root: Path | None = None,
             device_budget: int | None = None, fp8: str = "auto") -> Any:  # fmt: skip

        from engine.arch.flux2 import loading, single_file
        from engine.arch.zimage.loading import load_tokenizer, text_encoder_from_state
        from engine.pipelines import torch_dtype

        torch_type = torch_dtype(dtype)
        path = Path(path)
        try:
            if path.is_dir():
                pipe = loading.load_folder(path, dtype=torch_type)
                storage = str(pipe.transformer.dtype).removeprefix("torch.")
            else:
                info = loading.inspect_transformer(path)
                parts = find_components(model_root, path, int(info.config["joint_attention_dim"]) // 3)
                storage = dtype if info.storage.endswith("_scaled") else info.storage
                transformer = loading.transformer_from_state(loading.read(path), dtype=torch_type)
                vae = _shared_component(single_file.identity(parts["vae"]), torch_type,
                                        lambda: single_file.load_vae(parts["vae"], dtype=torch_type))  # fmt: skip
                text = _shared_component(parts["text_encoder"], torch_type,
                                         lambda: text_encoder_from_state(loading.read(parts["text_encoder"]),
                                                                         dtype=torch_type))  # fmt: skip
                pipe = loading.pipeline(transformer, vae, text, load_tokenizer(parts["tokenizer"]))
        except EngineError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            if "out of memory" in str(exc).lower():
                raise EngineError(ErrorCode.OUT_OF_MEMORY, f"out of memory loading '{path.name}': {exc}") from exc
            raise EngineError(ErrorCode.CORRUPT_FILE, f"could not load '{path.name}' as a FLUX.2 model "
                              f"({type(exc).__name__}: {exc})") from exc  # fmt: skip
        reads, gives = int(pipe.transformer.config.joint_attention_dim), 3 * int(pipe.text_encoder.config.hidden_size)
        if reads != gives:
            raise EngineError(ErrorCode.ARCH_MISMATCH, f"'{path.name}' reads {reads}-wide text features but its text "
                              f"encoder gives {gives}: Klein 4B reads Qwen3-4B, Klein 9B Qwen3-8B")  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        cast_transformer(pipe.transformer, torch_type)
        weights = sum(p.numel() for p in pipe.transformer.parameters())
        plan = memory_plan(device=device, budget=device_budget, transformer_bytes=2 * weights,
                           text_encoder_bytes=_tensor_bytes(pipe.text_encoder), file_storage=storage, dtype=dtype,
                           fp8=fp8)  # fmt: skip
        apply_memory_plan(pipe, plan)
        return pipe

    def place(self, pipe: Any, device: str) -> None:
        FluxRuntime.place(self, pipe, device)  # type: ignore[arg-type]

    def denoiser(self, pipe: Any) -> Any:
        return pipe.transformer

    def set_denoiser(self, pipe: Any, module: Any) -> None:
        pipe.transformer = module

    def lora_components(self, pipe: Any) -> dict[str, Any]:
        found = {}
        for name in ("transformer", "text_encoder"):
            module = getattr(pipe, name, None)
            if module is not None:
                found[name] = getattr(module, "_orig_mod", module)
        return found

    def map_lora_keys(self, pipe: Any, modules: Sequence[str]) -> dict[str, list[LoraTarget]] | None:
        return None

    def bind(self, lora: Any, pipe: Any, *, model_name: str) -> Any:
        from engine.arch.flux2.lora_keys import bind_flux2_lora

        return bind_flux2_lora(lora, pipe, model_name=model_name)

    def read_lora(self, path: Path, *, label: str, sha256: str) -> Any:
        from engine.arch.flux2.lora_keys import read_flux2_lora

        return read_flux2_lora(path, label=label, sha256=sha256)

    def positions(self, recipe: Any) -> int:
        return (recipe.width // SIZE_MULTIPLE) * (recipe.height // SIZE_MULTIPLE)

    def rows_per_image(self, recipe: Any) -> int:
        return 2 if is_base(recipe) and float(recipe.cfg_scale) > 1 else 1

    def prompt_encoder(self, pipe: Any, *, clip_skip: int, embeddings: dict[str, Any]) -> Any:
        if clip_skip != 1:
            raise EngineError(ErrorCode.INVALID_RECIPE, f"clip skip {clip_skip} does not apply to FLUX.2: its prompt "
                              "is read by Qwen3, not CLIP; leave clip skip at 1")  # fmt: skip
        if embeddings:
            raise EngineError(ErrorCode.INVALID_RECIPE, "textual-inversion embeddings do not apply to FLUX.2 "
                              f"({', '.join(sorted(embeddings))}); describe it in words instead")  # fmt: skip
        return Flux2PromptEncoder(pipe)

    def hooks(self, pipe: Any, conditioning: Any) -> AbstractContextManager[None]:
        return nullcontext()

    def scheduler(self, base_config: Any, sampler: str, prediction: Any = None, shift: float | None = None) -> Any:
        """Flow-matching Euler on the model's own config; a recipe's ``shift`` fixes the shift instead."""
        from engine.samplers import flow_match_scheduler

        return flow_match_scheduler(base_config, shift)

    def prepare_latents(self, pipe: Any, recipe: Any, generators: Sequence[Any], *, device: Any) -> Any:
        import torch

        channels = int(pipe.transformer.config.in_channels)
        h, w = recipe.height // SIZE_MULTIPLE, recipe.width // SIZE_MULTIPLE
        noise = torch.cat([torch.randn((1, channels, h, w), generator=g, dtype=torch.float32) for g in generators])
        return noise.to(device=device, dtype=compute_dtype(pipe.transformer))  # packed by the pipeline

    def call(self, pipe: Any, *, conditioning: Any, recipe: Any, latents: Any, generators: Sequence[Any],
             callback: Callable[..., dict[str, Any]]) -> Any:  # fmt: skip
        for side, value in (("width", recipe.width), ("height", recipe.height)):
            if value % SIZE_MULTIPLE:
                raise EngineError(ErrorCode.INVALID_RECIPE, f"FLUX.2 image {side} must be a multiple of "
                                  f"{SIZE_MULTIPLE} (got {value})")  # fmt: skip
        return pipe(
            **conditioning.kwargs,
            guidance_scale=float(recipe.cfg_scale) if conditioning.guidance else 1.0,
            num_inference_steps=recipe.steps,
            width=recipe.width,
            height=recipe.height,
            latents=latents,
            generator=list(generators) if len(generators) > 1 else generators[0],
            max_sequence_length=BUDGET,
            text_encoder_out_layers=out_layers(pipe.text_encoder),
            callback_on_step_end=callback,
            output_type="pil",
        )


RUNTIME = Flux2Runtime()
