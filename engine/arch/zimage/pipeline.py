"""Running Z-Image: diffusers' ``ZImagePipeline`` with the authors' rules, seeded, as images.

What is decided here: Turbo runs without guidance (diffusers' ``guidance_scale`` 0: one row per
step, no negative); Base runs true CFG with the negative prompt, its recipe CFG being ComfyUI's
(diffusers' scale + 1); the sampler is flow-matching Euler at the shipped shift of 3 on
ZImagePipeline's own sigmas; sizes are multiples of 16; the prompt goes through Qwen3's chat
template and the text encoder's second-to-last hidden states, at most 512 tokens, each
prompt's own length (no padding reaches the transformer).

Single-file transformers find their VAE, text encoder and tokenizer in the models folder's
``zimage-components/`` (the VAE may also be FLUX's, in ``flux-components/``: it is the same
file). Components are loaded once and shared by every model naming the same file
(:func:`engine.arch.flux.pipeline._shared_component`), and the memory plan is FLUX's: the
transformer's storage and where the text encoder runs, chosen from the device budget.
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
from engine.arch.runtime import LoraTarget, sibling_pipeline
from engine.protocol import EngineError, ErrorCode

COMPONENTS_FOLDER = "zimage-components"
#: FLUX.1's components folder, where the same ``ae.safetensors`` may already be.
FLUX_COMPONENTS = "flux-components"
_GLOBS = {"vae": "ae*.safetensors", "text_encoder": "qwen*.safetensors"}
TOKENIZER_FOLDER = "tokenizer"
#: Qwen3's tokens per prompt, the chat template's included (ZImagePipeline's max_sequence_length).
BUDGET = 512
#: The VAE's 8x, then 2x2 patches.
SIZE_MULTIPLE = 16


def find_components(model_root: Path | None, transformer: Path) -> dict[str, Path]:
    """The VAE, Qwen3 text encoder and tokenizer folder for a single-file transformer: in
    ``<models>/zimage-components/`` (or beside the file in one), the VAE also in
    ``flux-components/``."""
    roots = [r for r in (model_root, transformer.parent) if r is not None]
    folders = [r / COMPONENTS_FOLDER for r in roots if (r / COMPONENTS_FOLDER).is_dir()]
    found: dict[str, Path] = {}
    for name, pattern in _GLOBS.items():
        places = folders + ([r / FLUX_COMPONENTS for r in roots if (r / FLUX_COMPONENTS).is_dir()] if name == "vae" else [])
        for folder in places:
            matches = sorted(folder.glob(pattern))
            if len(matches) > 1:
                raise EngineError(ErrorCode.INVALID_RECIPE, f"'{folder.name}/' holds {len(matches)} {pattern} files "
                                  f"({', '.join(m.name for m in matches)}); keep one so every Z-Image model uses the same")  # fmt: skip
            if matches:
                found[name] = matches[0]
                break
    for folder in folders:
        if (folder / TOKENIZER_FOLDER / "tokenizer.json").is_file():
            found["tokenizer"] = folder / TOKENIZER_FOLDER
            break
    wanted = {**_GLOBS, "tokenizer": f"{TOKENIZER_FOLDER}/ (Qwen3's tokenizer.json and tokenizer_config.json)"}
    missing = [wanted[n] for n in wanted if n not in found]
    if missing:
        raise EngineError(ErrorCode.UNKNOWN_FILE, f"'{transformer.name}' is a Z-Image transformer without its VAE, "
                          f"text encoder or tokenizer: put {', '.join(missing)} in the models folder's "
                          f"'{COMPONENTS_FOLDER}/' (shared by every Z-Image model; the VAE is FLUX.1's ae.safetensors, "
                          "the text encoder Qwen3-4B, qwen_3_4b.safetensors), or use a diffusers folder")  # fmt: skip
    return found


def is_base(recipe: Any) -> bool:
    """Z-Image Base (true CFG) rather than Turbo: the registry's variant says so."""
    return getattr(recipe, "variant", "") == "base"


def diffusers_guidance(recipe: Any) -> float:
    """ZImagePipeline's ``guidance_scale``: 0 on Turbo; on Base the recipe's CFG less one
    (diffusers computes ``pos + g·(pos − neg)``, ComfyUI ``neg + c·(pos − neg)``: c = g + 1)."""
    return max(0.0, float(recipe.cfg_scale) - 1.0) if is_base(recipe) else 0.0


class ZImagePromptEncoder:
    """Prompts through Qwen3 as ZImagePipeline reads them, cached per LoRA state.

    A1111's emphasis brackets are parsed off (the words stay, weights are not applied: a
    language model reads the text, and no tool weights Qwen's hidden states the way Forge
    weights T5's); ``BREAK`` is a space.
    """

    def __init__(self, pipe: Any, budget: int = BUDGET) -> None:
        self.pipe = pipe
        self.budget = budget
        cache = getattr(pipe, "_atelier_prompt_cache", None)
        if cache is None:
            cache = pipe._atelier_prompt_cache = OrderedDict()
        self.cache: OrderedDict[Any, Any] = cache

    def encode(self, prompt: str) -> tuple[Any, Any]:
        import torch

        from engine.prompting.attention import is_break, parse_attention
        from engine.prompting.encode import PromptInfo

        key = (prompt, self.budget, getattr(self.pipe, "_atelier_lora_state", None))
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
            return hit
        plain = "".join(" " if is_break(f) else f[0] for f in parse_attention(prompt)) if prompt else ""
        tokenizer, encoder = self.pipe.tokenizer, self.pipe.text_encoder
        text = tokenizer.apply_chat_template([{"role": "user", "content": plain}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=True)  # fmt: skip
        used = len(tokenizer(text).input_ids)
        ids = tokenizer([text], padding="max_length", max_length=self.budget, truncation=True, return_tensors="pt")
        mask = ids.attention_mask.bool()
        with torch.inference_mode():
            hidden = encoder(input_ids=ids.input_ids.to(encoder.device), attention_mask=mask.to(encoder.device),
                             output_hidden_states=True).hidden_states[-2]  # fmt: skip
        result = (hidden[0][mask[0].to(hidden.device)].float(), PromptInfo(tokens=min(used, self.budget), chunks=1,
                                                                            embeddings_used=()))  # fmt: skip
        self.cache[key] = result
        while len(self.cache) > PROMPT_CACHE_MAX:
            self.cache.popitem(last=False)
        return result

    def conditioning(self, prompts: Sequence[str], negatives: Sequence[str], *, guidance: bool = False) -> Any:
        from engine.prompting.encode import Conditioning

        transformer = self.pipe.transformer
        dtype, device = compute_dtype(transformer), transformer.device
        rows = [self.encode(p) for p in prompts]
        kwargs: dict[str, Any] = {"prompt_embeds": [h.to(device, dtype) for h, _ in rows]}
        info = [i for _, i in rows]
        negative_info = [type(i)(0, 0, ()) for i in info]
        if guidance:
            negative_rows = [self.encode(n) for n in negatives]
            kwargs["negative_prompt_embeds"] = [h.to(device, dtype) for h, _ in negative_rows]
            negative_info = [i for _, i in negative_rows]
        return Conditioning(kwargs=kwargs, negative_lengths=[], positive_lengths=[self.budget] * len(rows),
                            info=info, negative_info=negative_info, guidance=guidance)  # fmt: skip


class ZImageRuntime:
    """Z-Image Turbo and Base behind :class:`engine.arch.runtime.Runtime`."""

    architecture = "zimage"

    def load(self, path: Path, *, device: str, dtype: str, model_root: Path | None = None,
             device_budget: int | None = None, fp8: str = "auto") -> Any:  # fmt: skip
        """A ``ZImagePipeline`` from a diffusers folder, or a single-file transformer with the
        shared components of :func:`find_components` (each loaded once for all models)."""

        from engine.arch.zimage import loading
        from engine.pipelines import torch_dtype

        torch_type = torch_dtype(dtype)
        path = Path(path)
        try:
            if path.is_dir():
                pipe = loading.load_folder(path, dtype=torch_type)
                storage = str(pipe.transformer.dtype).removeprefix("torch.")
            else:
                info = loading.inspect_transformer(path)
                parts = find_components(model_root, path)
                # A scaled fp8 file is dequantised while loading; storing it in plain fp8 again
                # would round small weights away, so only the device budget may ask for that.
                storage = dtype if info.storage.endswith("_scaled") else info.storage
                transformer = loading.transformer_from_state(loading.read(path), dtype=torch_type)
                vae = _shared_component(parts["vae"], torch_type,
                                        lambda: loading.vae_from_state(loading.read(parts["vae"]), dtype=torch_type))  # fmt: skip
                text = _shared_component(parts["text_encoder"], torch_type,
                                         lambda: loading.text_encoder_from_state(loading.read(parts["text_encoder"]),
                                                                                 dtype=torch_type))  # fmt: skip
                pipe = loading.pipeline(transformer, vae, text, loading.load_tokenizer(parts["tokenizer"]))
        except EngineError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            if "out of memory" in str(exc).lower():
                raise EngineError(ErrorCode.OUT_OF_MEMORY, f"out of memory loading '{path.name}': {exc}") from exc
            raise EngineError(ErrorCode.CORRUPT_FILE, f"could not load '{path.name}' as a Z-Image model "
                              f"({type(exc).__name__}: {exc})") from exc  # fmt: skip
        if int(pipe.transformer.config.cap_feat_dim) != int(pipe.text_encoder.config.hidden_size):
            raise EngineError(ErrorCode.ARCH_MISMATCH, f"'{path.name}' reads {pipe.transformer.config.cap_feat_dim}-wide "
                              f"text features but its text encoder gives {pipe.text_encoder.config.hidden_size}: "
                              "Z-Image reads Qwen3-4B (2560); a Lumina 2 file reads Gemma and is not Z-Image")  # fmt: skip
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
        return None  # binding goes through bind (fused qkv sliced)

    def bind(self, lora: Any, pipe: Any, *, model_name: str) -> Any:
        from engine.arch.zimage.lora_keys import bind_zimage_lora

        return bind_zimage_lora(lora, pipe, model_name=model_name)

    def read_lora(self, path: Path, *, label: str, sha256: str) -> Any:
        from engine.arch.zimage.lora_keys import read_zimage_lora

        return read_zimage_lora(path, label=label, sha256=sha256)

    def positions(self, recipe: Any) -> int:
        return (recipe.width // SIZE_MULTIPLE) * (recipe.height // SIZE_MULTIPLE)

    def rows_per_image(self, recipe: Any) -> int:
        return 2 if diffusers_guidance(recipe) > 0 else 1

    def prompt_encoder(self, pipe: Any, *, clip_skip: int, embeddings: dict[str, Any]) -> Any:
        if clip_skip != 1:
            raise EngineError(ErrorCode.INVALID_RECIPE, f"clip skip {clip_skip} does not apply to Z-Image: its "
                              "prompt is read by Qwen3, not CLIP; leave clip skip at 1")  # fmt: skip
        if embeddings:
            raise EngineError(ErrorCode.INVALID_RECIPE, "textual-inversion embeddings do not apply to Z-Image "
                              f"({', '.join(sorted(embeddings))}): they are CLIP word vectors for SD 1.5/SDXL; "
                              "describe it in words instead")  # fmt: skip
        return ZImagePromptEncoder(pipe)

    def hooks(self, pipe: Any, conditioning: Any) -> AbstractContextManager[None]:
        return nullcontext()

    def scheduler(self, base_config: Any, sampler: str, prediction: Any = None, shift: float | None = None) -> Any:
        """Flow-matching Euler on the model's own config (Turbo and Base: shift 3); a recipe's
        ``shift`` fixes the shift instead."""
        from engine.samplers import flow_match_scheduler

        return flow_match_scheduler(base_config, shift)

    def prepare_latents(self, pipe: Any, recipe: Any, generators: Sequence[Any], *, device: Any) -> Any:
        import torch

        channels = int(pipe.transformer.config.in_channels)
        h, w = 2 * (recipe.height // SIZE_MULTIPLE), 2 * (recipe.width // SIZE_MULTIPLE)
        noise = torch.cat([torch.randn((1, channels, h, w), generator=g, dtype=torch.float32) for g in generators])
        return noise.to(device)  # ZImagePipeline keeps latents in float32 between steps

    def call(self, pipe: Any, *, conditioning: Any, recipe: Any, latents: Any, generators: Sequence[Any],
             callback: Callable[..., dict[str, Any]]) -> Any:  # fmt: skip
        for side, value in (("width", recipe.width), ("height", recipe.height)):
            if value % SIZE_MULTIPLE:
                raise EngineError(ErrorCode.INVALID_RECIPE, f"Z-Image image {side} must be a multiple of "
                                  f"{SIZE_MULTIPLE} (got {value})")  # fmt: skip
        return pipe(
            **conditioning.kwargs,
            num_inference_steps=recipe.steps,
            guidance_scale=diffusers_guidance(recipe) if conditioning.guidance else 0.0,
            width=recipe.width,
            height=recipe.height,
            latents=latents,
            generator=list(generators) if len(generators) > 1 else generators[0],
            max_sequence_length=BUDGET,
            callback_on_step_end=callback,
            output_type="pil",
        )


    def img2img(self, pipe: Any, *, conditioning: Any, recipe: Any, images: Any, strength: float,
                generators: Sequence[Any], callback: Callable[..., dict[str, Any]]) -> Any:  # fmt: skip
        """diffusers' ``ZImageImg2ImgPipeline`` on the loaded components (``from_pipe``: no weight
        copied); ``images`` is the [-1, 1] pixel tensor (engine.picture_run.as_pixels)."""
        from diffusers import ZImageImg2ImgPipeline

        runner = sibling_pipeline(pipe, ZImageImg2ImgPipeline)
        return runner(
            **conditioning.kwargs,
            image=images,
            strength=strength,
            num_inference_steps=recipe.steps,
            guidance_scale=diffusers_guidance(recipe) if conditioning.guidance else 0.0,
            width=recipe.width,
            height=recipe.height,
            generator=list(generators) if len(generators) > 1 else generators[0],
            max_sequence_length=BUDGET,
            callback_on_step_end=callback,
            output_type="pil",
        )


RUNTIME = ZImageRuntime()
