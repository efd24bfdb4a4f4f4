"""Running Qwen-Image: diffusers' ``QwenImagePipeline`` with the authors' rules, seeded.

What is decided here: true classifier-free guidance with the negative prompt (the recipe's CFG
is ``true_cfg_scale``: ``neg + s·(pos − neg)``, then rescaled to the conditioned prediction's
norm as the pipeline does; two transformer calls per step above 1, one at 1); 50 steps by
default; flow-matching Euler with the resolution-dependent exponential shift of the shipped
scheduler config; sizes in multiples of 16; the prompt read through the pipeline's own template
and Qwen2.5-VL's last hidden states (the template's 34 tokens dropped), at most 1024 tokens.

The text encoder (Qwen2.5-VL 7B, about 16 GB in bf16) and the 20B transformer are placed by
FLUX's memory plan from the device budget: fp8 storage when 16 bits would not fit, the text
encoder on the CPU when it would not fit beside the transformer.
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

COMPONENTS_FOLDER = "qwen-image-components"
_PARTS = {"vae": "vae", "text_encoder": "text_encoder", "tokenizer": "tokenizer"}
BUDGET = 1024
SIZE_MULTIPLE = 16


def find_components(model_root: Path | None, transformer: Path) -> dict[str, Path]:
    """The VAE and text encoder (the repository's ``vae/`` and ``text_encoder/`` folders, or
    ComfyUI's ``qwen_image_vae.safetensors`` and ``qwen_2.5_vl_7b*.safetensors``, told apart by
    their headers) and the ``tokenizer/`` folder in ``qwen-image-components/``, and its ``processor/``
    where there is one (only the edit models read it)."""
    from engine.arch.components import QWEN25_VL, QWEN_IMAGE_VAE, component_of, find_component
    from engine.inspect import header_shapes

    roots = [r for r in (model_root, transformer.parent) if r is not None]
    folders = [r / COMPONENTS_FOLDER for r in roots if (r / COMPONENTS_FOLDER).is_dir()]
    found: dict[str, Path] = {}
    for name, sub in _PARTS.items():
        for folder in folders:
            marker = "tokenizer_config.json" if name == "tokenizer" else "config.json"
            if (folder / sub / marker).is_file():
                found[name] = folder / sub
                break
    for name, component in (("vae", QWEN_IMAGE_VAE), ("text_encoder", QWEN25_VL)):
        if name not in found and (file := find_component(folders, component, header_shapes)) is not None:
            found[name] = file
    from engine.arch.qwen_image.edit import PROCESSOR_FOLDER, has_processor

    processor = next((f / PROCESSOR_FOLDER for f in folders if has_processor(f / PROCESSOR_FOLDER)), None)
    if processor is not None:
        found["processor"] = processor
    wanted = {"vae": "vae/ (or qwen_image_vae.safetensors)",
              "text_encoder": "text_encoder/ (or qwen_2.5_vl_7b.safetensors)", "tokenizer": "tokenizer/"}  # fmt: skip
    missing = [text for name, text in wanted.items() if name not in found]
    if missing:
        others = []
        for file in sorted(p for f in folders for p in f.glob("*.safetensors")):
            what = component_of(header_shapes(file))
            others.append(f"{file.name} is {what.label if what else 'no Qwen-Image VAE or text encoder'}")
        extra = f" ({'; '.join(others)})" if others else ""
        raise EngineError(ErrorCode.UNKNOWN_FILE, f"'{transformer.name}' is a Qwen-Image transformer without its "
                          f"{', '.join(missing)}: put them in the models folder's '{COMPONENTS_FOLDER}/' (shared by "
                          f"every Qwen-Image model; folders from the Qwen/Qwen-Image diffusers repository or ComfyUI's "
                          f"single files), or use the whole diffusers folder{extra}")  # fmt: skip
    return found


def plain_text(prompt: str) -> str:
    """What Qwen2.5-VL reads of a prompt: A1111 brackets read off, ``BREAK`` a space, never empty
    (the pipelines' own negative default is one space)."""
    from engine.prompting.attention import is_break, parse_attention

    plain = "".join(" " if is_break(f) else f[0] for f in parse_attention(prompt)) if prompt else ""
    return plain or " "


class QwenPromptEncoder:
    """Prompts through the pipeline's template and Qwen2.5-VL, cached per LoRA state; A1111
    brackets are read off (a language model reads the words), ``BREAK`` is a space."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        cache = getattr(pipe, "_atelier_prompt_cache", None)
        if cache is None:
            cache = pipe._atelier_prompt_cache = OrderedDict()
        self.cache: OrderedDict[Any, Any] = cache

    def encode(self, prompt: str) -> tuple[Any, Any]:
        import torch

        from engine.prompting.encode import PromptInfo

        key = (prompt, getattr(self.pipe, "_atelier_lora_state", None))
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
            return hit
        plain = plain_text(prompt)
        encoder = self.pipe.text_encoder
        with torch.inference_mode():
            embeds, mask = self.pipe._get_qwen_prompt_embeds([plain], device=encoder.device)
        hidden = embeds[0][: int(mask[0].sum())][:BUDGET].float()
        result = (hidden, PromptInfo(tokens=int(hidden.shape[0]), chunks=1, embeddings_used=()))
        self.cache[key] = result
        while len(self.cache) > PROMPT_CACHE_MAX:
            self.cache.popitem(last=False)
        return result

    def _stack(self, rows: list[Any], device: Any, dtype: Any) -> tuple[Any, Any]:
        import torch

        length = max(h.shape[0] for h in rows)
        embeds = torch.stack([torch.cat([h, h.new_zeros(length - h.shape[0], h.shape[1])]) for h in rows])
        mask = torch.stack([torch.arange(length) < h.shape[0] for h in rows]).long()
        return embeds.to(device, dtype), mask.to(device)

    def conditioning(self, prompts: Sequence[str], negatives: Sequence[str], *, guidance: bool = False) -> Any:
        from engine.prompting.encode import Conditioning

        transformer = self.pipe.transformer
        dtype, device = compute_dtype(transformer), transformer.device
        rows = [self.encode(p) for p in prompts]
        texts = ([plain_text(p) for p in prompts], [plain_text(n) for n in negatives])
        embeds, mask = self._stack([h for h, _ in rows], device, dtype)
        kwargs: dict[str, Any] = {"prompt_embeds": embeds, "prompt_embeds_mask": mask}
        info = [i for _, i in rows]
        negative_info = [type(i)(0, 0, ()) for i in info]
        if guidance:
            negative_rows = [self.encode(n) for n in negatives]
            kwargs["negative_prompt_embeds"], kwargs["negative_prompt_embeds_mask"] = self._stack(
                [h for h, _ in negative_rows], device, dtype)  # fmt: skip
            negative_info = [i for _, i in negative_rows]
        return Conditioning(kwargs=kwargs, negative_lengths=[], positive_lengths=[BUDGET] * len(rows), info=info,
                            negative_info=negative_info, guidance=guidance, texts=texts)  # fmt: skip


class QwenImageRuntime:
    """Qwen-Image text-to-image behind :class:`engine.arch.runtime.Runtime`."""

    architecture = "qwen_image"

    def load(self, path: Path, *, device: str, dtype: str, model_root: Path | None = None,
             device_budget: int | None = None, fp8: str = "auto") -> Any:  # fmt: skip

        from engine.arch.qwen_image import loading, single_file
        from engine.pipelines import torch_dtype

        torch_type = torch_dtype(dtype)
        path = Path(path)
        try:
            if path.is_dir():
                pipe = loading.load_folder(path, dtype=torch_type)
                storage = str(pipe.transformer.dtype).removeprefix("torch.")
                processor: Path | None = path / "processor"
            else:
                info = loading.inspect_transformer(path)
                parts = find_components(model_root, path)
                storage = dtype if info.storage.endswith("_scaled") else info.storage
                transformer = loading.transformer_from_state(loading.read(path), dtype=torch_type)
                vae = _shared_component(single_file.identity(parts["vae"]), torch_type,
                                        lambda: single_file.load_vae(parts["vae"], dtype=torch_type))  # fmt: skip
                text = _shared_component(single_file.identity(parts["text_encoder"]), torch_type,
                                         lambda: single_file.load_text_encoder(parts["text_encoder"], dtype=torch_type))  # fmt: skip
                pipe = loading.pipeline(transformer, vae, text, loading.tokenizer_from_folder(parts["tokenizer"]))
                processor = parts.get("processor")
        except EngineError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            if "out of memory" in str(exc).lower():
                raise EngineError(ErrorCode.OUT_OF_MEMORY, f"out of memory loading '{path.name}': {exc}") from exc
            raise EngineError(ErrorCode.CORRUPT_FILE, f"could not load '{path.name}' as a Qwen-Image model "
                              f"({type(exc).__name__}: {exc})") from exc  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        # An edit model's processor folder, read when a picture comes (engine.arch.qwen_image.edit).
        pipe._atelier_processor_folder = processor
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
        from engine.arch.qwen_image.lora_keys import bind_qwen_lora

        return bind_qwen_lora(lora, pipe, model_name=model_name)

    def read_lora(self, path: Path, *, label: str, sha256: str) -> Any:
        from engine.arch.qwen_image.lora_keys import read_qwen_lora

        return read_qwen_lora(path, label=label, sha256=sha256)

    def positions(self, recipe: Any) -> int:
        return (recipe.width // SIZE_MULTIPLE) * (recipe.height // SIZE_MULTIPLE)

    def rows_per_image(self, recipe: Any) -> int:
        return 2 if float(recipe.cfg_scale) > 1 else 1

    def prompt_encoder(self, pipe: Any, *, clip_skip: int, embeddings: dict[str, Any]) -> Any:
        if clip_skip != 1:
            raise EngineError(ErrorCode.INVALID_RECIPE, f"clip skip {clip_skip} does not apply to Qwen-Image: its "
                              "prompt is read by Qwen2.5-VL, not CLIP; leave clip skip at 1")  # fmt: skip
        if embeddings:
            raise EngineError(ErrorCode.INVALID_RECIPE, "textual-inversion embeddings do not apply to Qwen-Image "
                              f"({', '.join(sorted(embeddings))}); describe it in words instead")  # fmt: skip
        return QwenPromptEncoder(pipe)

    def hooks(self, pipe: Any, conditioning: Any) -> AbstractContextManager[None]:
        return nullcontext()

    def scheduler(self, base_config: Any, sampler: str, prediction: Any = None, shift: float | None = None) -> Any:
        """Flow-matching Euler on the model's own config; a recipe's ``shift`` fixes the shift instead."""
        from engine.samplers import flow_match_scheduler

        return flow_match_scheduler(base_config, shift)

    def prepare_latents(self, pipe: Any, recipe: Any, generators: Sequence[Any], *, device: Any) -> Any:
        import torch

        channels = int(pipe.transformer.config.in_channels) // 4
        h, w = 2 * (recipe.height // SIZE_MULTIPLE), 2 * (recipe.width // SIZE_MULTIPLE)
        noise = torch.cat([torch.randn((1, 1, channels, h, w), generator=g, dtype=torch.float32) for g in generators])
        packed = pipe._pack_latents(noise, noise.shape[0], channels, h, w)
        return packed.to(device=device, dtype=compute_dtype(pipe.transformer))

    def call(self, pipe: Any, *, conditioning: Any, recipe: Any, latents: Any, generators: Sequence[Any],
             callback: Callable[..., dict[str, Any]]) -> Any:  # fmt: skip
        for side, value in (("width", recipe.width), ("height", recipe.height)):
            if value % SIZE_MULTIPLE:
                raise EngineError(ErrorCode.INVALID_RECIPE, f"Qwen-Image image {side} must be a multiple of "
                                  f"{SIZE_MULTIPLE} (got {value})")  # fmt: skip
        return pipe(
            **conditioning.kwargs,
            true_cfg_scale=float(recipe.cfg_scale) if conditioning.guidance else 1.0,
            num_inference_steps=recipe.steps,
            width=recipe.width,
            height=recipe.height,
            latents=latents,
            generator=list(generators) if len(generators) > 1 else generators[0],
            max_sequence_length=BUDGET,
            callback_on_step_end=callback,
            output_type="pil",
        )

    def edit(self, pipe: Any, *, conditioning: Any, recipe: Any, images: Sequence[Any], latents: Any,
             generators: Sequence[Any], callback: Callable[..., dict[str, Any]]) -> Any:  # fmt: skip
        """Qwen-Image-Edit (one picture) or -2509 (up to three), as the recipe's variant says, at
        the recipe's size: see :mod:`engine.arch.qwen_image.edit`."""
        from engine.arch.qwen_image.edit import run_edit

        for side, value in (("width", recipe.width), ("height", recipe.height)):
            if value % SIZE_MULTIPLE:
                raise EngineError(ErrorCode.INVALID_RECIPE, f"Qwen-Image image {side} must be a multiple of "
                                  f"{SIZE_MULTIPLE} (got {value})")  # fmt: skip
        return run_edit(pipe, conditioning=conditioning, recipe=recipe, images=images, latents=latents,
                        generators=generators, callback=callback)  # fmt: skip


RUNTIME = QwenImageRuntime()
