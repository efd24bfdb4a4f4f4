"""Running FLUX.1: diffusers' ``FluxPipeline`` with FLUX's own rules, seeded, returning images.

What differs from SD and is decided here: dev takes a *distilled* guidance value (an input of
the transformer, one row per step, no negative prompt) and schnell none; the sampler is
flow-matching Euler whose shift grows with the image's token count (``FluxPipeline`` computes
``mu`` from the packed latent length when the scheduler has ``use_dynamic_shifting``, dev's
shipped config; schnell's uses a fixed shift of 1); sizes are multiples of 16 (8x VAE, then
2x2 patches); the prompt goes whole to T5 up to its budget (512 tokens dev, 256 schnell) while
CLIP-L, which only gives the pooled vector, reads its first 77 tokens.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.arch.runtime import LoraTarget, sibling_pipeline
from engine.protocol import EngineError, ErrorCode

#: Per variant: (steps, distilled guidance or None, T5 token budget).
DEFAULTS = {"dev": (28, 3.5, 512), "schnell": (4, None, 256)}
SIZE_MULTIPLE = 16


def cast_transformer(transformer: Any, torch_type: Any) -> None:
    """Put a DiT's 16/32-bit parameters and buffers in the engine's dtype, leaving fp8 ones as
    stored: an fp8 file keeps its weights fp8 and computes in 16 bits (FLUX.1, Z-Image, Qwen-Image
    and FLUX.2 load this way)."""
    import torch

    fp8_types = (torch.float8_e4m3fn, torch.float8_e5m2)
    for tensor in [*transformer.parameters(), *transformer.buffers()]:
        if tensor.is_floating_point() and tensor.dtype not in fp8_types and tensor.dtype != torch_type:
            tensor.data = tensor.data.to(torch_type)


@dataclass(frozen=True)
class FluxRequest:
    prompt: str
    width: int = 1024
    height: int = 1024
    seed: int = 0
    steps: int | None = None
    #: Distilled guidance (dev); must stay None for schnell, which has no guidance input.
    guidance: float | None = None
    images: int = 1


def variant_of(pipe: Any) -> str:
    return "dev" if pipe.transformer.config.guidance_embeds else "schnell"


def check_request(request: FluxRequest, variant: str) -> None:
    """Refuse what FLUX cannot do, with the reason, before any step runs."""
    for side, value in (("width", request.width), ("height", request.height)):
        if value <= 0 or value % SIZE_MULTIPLE:
            raise EngineError(ErrorCode.INVALID_RECIPE, f"FLUX.1 image {side} must be a positive multiple of "
                              f"{SIZE_MULTIPLE} (got {value}); try {max(SIZE_MULTIPLE, round(value / 16) * 16)}")  # fmt: skip
    if variant == "schnell" and request.guidance is not None:
        raise EngineError(ErrorCode.INVALID_RECIPE, "FLUX.1 schnell has no guidance input: leave guidance "
                          "unset (it is distilled for 4 steps without it)")  # fmt: skip
    if request.steps is not None and request.steps < 1:
        raise EngineError(ErrorCode.INVALID_RECIPE, f"steps must be at least 1 (got {request.steps})")


def generate(pipe: Any, request: FluxRequest) -> list[Any]:
    """PIL images for ``request`` on a loaded ``FluxPipeline``; the same request gives the same
    pixels (the noise comes from a CPU generator seeded with ``request.seed``)."""
    import torch

    variant = variant_of(pipe)
    check_request(request, variant)
    steps, guidance, budget = DEFAULTS[variant]
    generator = torch.Generator("cpu").manual_seed(request.seed)
    with torch.inference_mode():
        result = pipe(
            prompt=request.prompt,
            width=request.width,
            height=request.height,
            num_inference_steps=request.steps or steps,
            # FluxPipeline feeds this to the guidance embedding only when the model has one.
            guidance_scale=request.guidance if request.guidance is not None else (guidance or 0.0),
            max_sequence_length=budget,
            num_images_per_prompt=request.images,
            generator=generator,
            output_type="pil",
        )
    return list(result.images)


def encode(pipe: Any, prompt: str) -> tuple[Any, Any]:
    """(T5 sequence embeddings, CLIP-L pooled vector) as the pipeline computes them."""
    import torch

    budget = DEFAULTS[variant_of(pipe)][2]
    with torch.inference_mode():
        embeds, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, max_sequence_length=budget)
    return embeds, pooled


# --- the runtime the generator asks (engine.arch.runtime.Runtime) -----------------------------

#: Where the operator puts the VAE, CLIP-L and T5-XXL files every single-file FLUX transformer
#: shares (relative to the model folder): one ``ae*``, one ``clip_l*`` and one ``t5xxl*``.
COMPONENTS_FOLDER = "flux-components"
_COMPONENT_GLOBS = {"vae": "ae*.safetensors", "clip_l": "clip_l*.safetensors", "t5": "t5xxl*.safetensors"}
#: Encoded prompts kept per pipeline (T5-XXL costs about a step on a GPU; members reroll).
PROMPT_CACHE_MAX = 64
#: FLUX's VAE: 8x down, then 2x2 latent patches packed into one token.
_PACK = 2

_shared_lock = threading.Lock()
#: (file, size, mtime, dtype) -> the loaded component, shared by every FLUX model naming it;
#: weak, so the last model using it frees it.
_shared: weakref.WeakValueDictionary[tuple[str, int, int, str], Any] = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class MemoryPlan:
    """Where a FLUX model's parts live, chosen from the device budget (reported in /health)."""

    #: "device" or "cpu": where CLIP-L and T5 run (their outputs then move to the device).
    text_encoders: str
    #: The transformer's weight storage: "float8_e4m3fn" (computed in bf16) or the load dtype.
    transformer_storage: str
    reason: str


def memory_plan(*, device: str, budget: int | None, transformer_bytes: int, text_encoder_bytes: int,
                file_storage: str, dtype: str, fp8: str = "auto") -> MemoryPlan:  # fmt: skip
    """Choose text-encoder placement and transformer storage for one FLUX model.

    ``transformer_bytes``: the transformer at 2 bytes a weight (bf16/fp16; fp8 halves it).
    ``fp8``: "auto" (fp8 when the file is fp8, or when bf16 would not fit the budget with room
    for activations), "on" or "off". On a CPU there is one memory: everything stays there and
    fp8 is used only when the file is fp8 or it is asked for. Text encoders go to the CPU when
    they would not fit beside the transformer: T5-XXL runs once per prompt, the transformer
    every step, so the step-bound part gets the device.
    """
    if fp8 not in ("auto", "on", "off"):
        raise ValueError(f"fp8 must be auto, on or off (got {fp8!r})")
    file_fp8 = file_storage.startswith("float8")
    on_gpu = str(device).startswith("cuda")
    headroom = 0.8  # activations, the VAE decode, the LoRA clean copies' staging
    if fp8 == "on" or (file_fp8 and fp8 != "off"):
        storage, why = "float8_e4m3fn", "the file is fp8" if file_fp8 and fp8 != "on" else "fp8 was asked for"
    elif fp8 == "auto" and on_gpu and budget is not None and transformer_bytes > budget * headroom:
        storage, why = "float8_e4m3fn", "the transformer in 16 bits would not fit the device budget"
    else:
        storage, why = dtype, "it fits" if on_gpu else "CPU"
    stored = transformer_bytes // 2 if storage.startswith("float8") else transformer_bytes
    if not on_gpu:
        return MemoryPlan("device", storage, f"{why}; on a CPU the text encoders share the one memory")
    if budget is not None and stored + text_encoder_bytes > budget * headroom:
        return MemoryPlan("cpu", storage, f"{why}; CLIP-L and T5 ({text_encoder_bytes >> 20} MiB) would not "
                          "fit beside the transformer, so they run on the CPU")  # fmt: skip
    return MemoryPlan("device", storage, f"{why}; the text encoders fit beside the transformer")


def find_components(model_root: Path | None, transformer: Path) -> dict[str, Path]:
    """The shared VAE / CLIP-L / T5 files for a single-file transformer: one of each in
    ``<model folder>/flux-components/`` (or, for a file outside it, beside the file)."""
    folders = [f for f in ((model_root / COMPONENTS_FOLDER) if model_root else None,
                           transformer.parent / COMPONENTS_FOLDER) if f is not None and f.is_dir()]  # fmt: skip
    found: dict[str, Path] = {}
    for name, pattern in _COMPONENT_GLOBS.items():
        for folder in folders:
            matches = sorted(folder.glob(pattern))
            if len(matches) > 1:
                raise EngineError(ErrorCode.INVALID_RECIPE, f"'{folder.name}/' holds {len(matches)} {pattern} files "
                                  f"({', '.join(m.name for m in matches)}); keep one so every FLUX model uses the same")  # fmt: skip
            if matches:
                found[name] = matches[0]
                break
    missing = [_COMPONENT_GLOBS[n] for n in _COMPONENT_GLOBS if n not in found]
    if missing:
        raise EngineError(ErrorCode.UNKNOWN_FILE, f"'{transformer.name}' is a FLUX.1 transformer without its VAE and "
                          f"text encoders: put {', '.join(missing)} in the models folder's '{COMPONENTS_FOLDER}/' "
                          "(shared by every FLUX model), or use an all-in-one file or a diffusers folder")  # fmt: skip
    return found


def _shared_component(path: Path, dtype: Any, build: Callable[[], Any]) -> Any:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(dtype))
    with _shared_lock:
        module = _shared.get(key)
        if module is None:
            module = build()
            module._atelier_shared = f"{Path(key[0]).name}:{key[1]}:{key[2]}"
            _shared[key] = module
    return module


def _tensor_bytes(module: Any) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def apply_memory_plan(pipe: Any, plan: MemoryPlan) -> None:
    """Store the transformer in fp8 when the plan says so and the file did not already."""
    import torch

    pipe._atelier_memory_plan = plan
    if plan.transformer_storage.startswith("float8"):
        from engine.arch.flux.loading import keep_fp8

        transformer = pipe.transformer
        names = {f"{n}.weight" for n, m in transformer.named_modules()
                 if isinstance(m, torch.nn.Linear) and m.weight.dtype != torch.float8_e4m3fn}  # fmt: skip
        if names:  # biases, norms and activations stay in the load dtype, the compute dtype
            keep_fp8(transformer, names, torch.float8_e4m3fn)


def compute_dtype(transformer: Any) -> Any:
    """The dtype the transformer computes in: its first parameter not stored in fp8."""
    import torch

    fp8 = (torch.float8_e4m3fn, torch.float8_e5m2)
    return next((p.dtype for p in transformer.parameters() if p.dtype not in fp8), torch.bfloat16)


class FluxPromptEncoder:
    """A1111 prompts on FLUX as Forge reads them.

    Forge (``backend/text_processing/t5_engine.py``) parses A1111's emphasis on FLUX, tokenises
    the text without the brackets and multiplies each T5 token's hidden state by its weight,
    then rescales to the original mean ("Original" emphasis); CLIP-L gives only the pooled
    vector, read from the plain text. So ``(word:1.3)`` weights ``word`` and no bracket ever
    reaches T5 as text. The whole prompt goes to T5 up to the variant's budget (512 dev, 256
    schnell), never cut at 77; CLIP-L reads its first 77 tokens as FluxPipeline does.
    """

    def __init__(self, pipe: Any, budget: int) -> None:
        self.pipe = pipe
        self.budget = budget
        cache = getattr(pipe, "_atelier_prompt_cache", None)
        if cache is None:
            cache = pipe._atelier_prompt_cache = OrderedDict()
        self.cache: OrderedDict[Any, Any] = cache

    def _t5_tokens(self, fragments: list[tuple[str, float]]) -> tuple[list[int], list[float], int]:
        from engine.arch.flux.t5_tokenizer import EOS_ID, PAD_ID

        tokenizer = self.pipe.tokenizer_2
        # The text without brackets is tokenised whole (Forge tokenises each weighted fragment
        # apart, which puts a word-start piece at every fragment edge); each token takes the
        # weight of the fragment its last character came from (a piece's offsets include the
        # space before the word, which belongs to the fragment before).
        text = "".join(fragment for fragment, _ in fragments)
        ends, weight_at = [], []
        position = 0
        for fragment, weight in fragments:
            position += len(fragment)
            ends.append(position)
            weight_at.append(weight)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(encoded.input_ids)
        weights: list[float] = []
        for start, stop in encoded.offset_mapping:
            last = max(start, stop - 1)
            index = next((i for i, end in enumerate(ends) if last < end), len(ends) - 1)
            weights.append(weight_at[index] if weight_at else 1.0)
        used = len(ids) + 1
        ids, weights = ids[: self.budget - 1] + [EOS_ID], weights[: self.budget - 1] + [1.0]
        pad = self.budget - len(ids)
        return ids + [PAD_ID] * pad, weights + [1.0] * pad, used

    def encode(self, prompt: str) -> tuple[Any, Any, Any]:
        import torch

        from engine.prompting.attention import is_break, parse_attention
        from engine.prompting.encode import PromptInfo

        key = (prompt, self.budget, getattr(self.pipe, "_atelier_lora_state", None))
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
            return hit
        # T5 reads one sequence, no 75-token chunks: BREAK is a space between its neighbours.
        fragments = [(" ", 1.0) if is_break(f) else f for f in parse_attention(prompt)]
        plain = "".join(text for text, _ in fragments)
        ids, weights, used = self._t5_tokens(fragments)
        t5 = self.pipe.text_encoder_2
        with torch.inference_mode():
            hidden = t5(torch.tensor([ids], device=t5.device), output_hidden_states=False)[0].float()
        if any(w != 1.0 for w in weights):  # A1111's "Original" emphasis, as Forge applies it to T5
            mean = hidden.mean()
            hidden = hidden * torch.tensor(weights, device=hidden.device)[None, :, None]
            hidden = hidden * (mean / hidden.mean())
        clip, tokenizer = self.pipe.text_encoder, self.pipe.tokenizer
        clip_ids = tokenizer([plain], padding="max_length", max_length=tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids  # fmt: skip
        with torch.inference_mode():
            pooled = clip(clip_ids.to(clip.device), output_hidden_states=False).pooler_output.float()
        result = (hidden, pooled, PromptInfo(tokens=used, chunks=1, embeddings_used=()))
        self.cache[key] = result
        while len(self.cache) > PROMPT_CACHE_MAX:
            self.cache.popitem(last=False)
        return result

    def conditioning(self, prompts: Sequence[str], negatives: Sequence[str], *, guidance: bool = False) -> Any:
        import torch

        from engine.prompting.encode import Conditioning

        rows = [self.encode(p) for p in prompts]
        transformer = self.pipe.transformer
        dtype = compute_dtype(transformer)
        kwargs = {
            "prompt_embeds": torch.cat([h for h, _, _ in rows]).to(transformer.device, dtype),
            "pooled_prompt_embeds": torch.cat([p for _, p, _ in rows]).to(transformer.device, dtype),
        }
        info = [i for _, _, i in rows]
        # FLUX reads no negative prompt (the bot says so); each image's record stays aligned.
        return Conditioning(kwargs=kwargs, negative_lengths=[], positive_lengths=[self.budget] * len(rows),
                            info=info, negative_info=[type(i)(0, 0, ()) for i in info], guidance=False)  # fmt: skip


class FluxRuntime:
    """FLUX.1 dev and schnell behind :class:`engine.arch.runtime.Runtime`."""

    architecture = "flux"

    def load(self, path: Path, *, device: str, dtype: str, model_root: Path | None = None,
             device_budget: int | None = None, fp8: str = "auto") -> Any:  # fmt: skip
        """A ``FluxPipeline`` from a diffusers folder, an all-in-one file, or a transformer file
        with the shared component files of :func:`find_components` (loaded once for all)."""
        from engine.arch.flux import loading
        from engine.pipelines import torch_dtype

        torch_type = torch_dtype(dtype)
        path = Path(path)
        try:
            if path.is_dir():
                pipe = loading.load_folder(path, dtype=torch_type)
                storage = str(pipe.transformer.dtype).removeprefix("torch.")
            else:
                shapes, _ = loading._shapes(path)
                if any(k.startswith(loading.AIO_VAE) for k in shapes):
                    pipe = loading.load_all_in_one(path, dtype=torch_type)
                    storage = loading.inspect_transformer(path, loading.AIO_TRANSFORMER).storage
                else:
                    parts = find_components(model_root, path)
                    storage = loading.inspect_transformer(path, "").storage
                    transformer = loading.transformer_from_bfl(loading._read(path), dtype=torch_type)
                    vae = _shared_component(parts["vae"], torch_type,
                                            lambda: loading.vae_from_ldm(loading._read(parts["vae"]), dtype=torch_type))  # fmt: skip
                    clip = _shared_component(parts["clip_l"], torch_type,
                                             lambda: loading.clip_from_state(loading._read(parts["clip_l"]), dtype=torch_type))  # fmt: skip
                    t5 = _shared_component(parts["t5"], torch_type,
                                           lambda: loading.t5_from_state(loading._read(parts["t5"]), dtype=torch_type))  # fmt: skip
                    variant = loading.inspect_transformer(path, "").variant
                    from engine.arch.flux.t5_tokenizer import tokenizer_beside

                    pipe = loading._pipeline(transformer, vae, clip, t5, variant, tokenizer_beside(parts["t5"]))
        except EngineError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            if "out of memory" in str(exc).lower():
                raise EngineError(ErrorCode.OUT_OF_MEMORY, f"out of memory loading '{path.name}': {exc}") from exc
            raise EngineError(ErrorCode.CORRUPT_FILE, f"could not load '{path.name}' as a FLUX.1 model "
                              f"({type(exc).__name__}: {exc})") from exc  # fmt: skip
        pipe.set_progress_bar_config(disable=True)

        # An fp8 file computes in bf16 (loading.transformer_from_bfl); the rest of the pipeline
        # runs in the engine's dtype, so the transformer's 16-bit parts follow it (fp8 stays fp8).
        cast_transformer(pipe.transformer, torch_type)
        weights = sum(p.numel() for p in pipe.transformer.parameters())
        encoders = sum(_tensor_bytes(m) for m in (pipe.text_encoder, pipe.text_encoder_2))
        plan = memory_plan(device=device, budget=device_budget, transformer_bytes=2 * weights,
                           text_encoder_bytes=encoders, file_storage=storage, dtype=dtype, fp8=fp8)  # fmt: skip
        apply_memory_plan(pipe, plan)
        return pipe

    def place(self, pipe: Any, device: str) -> None:
        """Move to ``device`` as the memory plan says: text encoders stay on the CPU when it
        put them there, and components shared with other models are never moved to the host
        tier (another model may be using them on the device; they are counted once)."""
        plan: MemoryPlan | None = getattr(pipe, "_atelier_memory_plan", None)
        to_host = not str(device).startswith("cuda")
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
            module = getattr(pipe, name, None)
            if module is None or (to_host and getattr(module, "_atelier_shared", None)):
                continue  # shared: stays where the models using it need it
            target = device
            if name.startswith("text_encoder") and plan is not None and plan.text_encoders == "cpu":
                target = "cpu"
            module.to(target)

    def denoiser(self, pipe: Any) -> Any:
        return pipe.transformer

    def set_denoiser(self, pipe: Any, module: Any) -> None:
        pipe.transformer = module

    def lora_components(self, pipe: Any) -> dict[str, Any]:
        found = {}
        for name in ("transformer", "text_encoder", "text_encoder_2"):
            module = getattr(pipe, name, None)
            if module is not None:
                found[name] = getattr(module, "_orig_mod", module)
        return found

    def map_lora_keys(self, pipe: Any, modules: Sequence[str]) -> dict[str, list[LoraTarget]] | None:
        # Binding goes through engine.arch.flux.lora_keys.bind_flux_lora (fused layers sliced).
        return None

    def bind(self, lora: Any, pipe: Any, *, model_name: str) -> Any:
        from engine.arch.flux.lora_keys import bind_flux_lora

        return bind_flux_lora(lora, pipe, model_name=model_name)

    def read_lora(self, path: Path, *, label: str, sha256: str) -> Any:
        from engine.arch.flux.lora_keys import read_flux_lora

        return read_flux_lora(path, label=label, sha256=sha256)

    def positions(self, recipe: Any) -> int:
        return (recipe.width // 16) * (recipe.height // 16)

    def rows_per_image(self, recipe: Any) -> int:
        return 1  # distilled guidance (dev) or none (schnell): one row per step, never CFG's two

    def budget(self, pipe: Any) -> int:
        return DEFAULTS[variant_of(pipe)][2]

    def prompt_encoder(self, pipe: Any, *, clip_skip: int, embeddings: dict[str, Any]) -> Any:
        if clip_skip != 1:
            raise EngineError(ErrorCode.INVALID_RECIPE, f"clip skip {clip_skip} does not apply to FLUX.1: its "
                              "prompt is read by T5 and CLIP-L's pooled output; leave clip skip at 1")  # fmt: skip
        if embeddings:
            raise EngineError(ErrorCode.INVALID_RECIPE, "textual-inversion embeddings do not apply to FLUX.1 "
                              f"({', '.join(sorted(embeddings))}): they are CLIP word vectors for SD 1.5/SDXL "
                              "and FLUX reads the prompt through T5; describe it in words instead")  # fmt: skip
        return FluxPromptEncoder(pipe, self.budget(pipe))

    def hooks(self, pipe: Any, conditioning: Any) -> AbstractContextManager[None]:
        return nullcontext()

    def scheduler(self, base_config: Any, sampler: str, prediction: Any = None, shift: float | None = None) -> Any:
        """Flow-matching Euler on the model's own config (dev: resolution-dependent shift); a recipe's
        ``shift`` fixes the shift instead."""
        from engine.samplers import flow_match_scheduler

        return flow_match_scheduler(base_config, shift)

    def prepare_latents(self, pipe: Any, recipe: Any, generators: Sequence[Any], *, device: Any) -> Any:
        import torch

        channels = pipe.transformer.config.in_channels // (_PACK * _PACK)
        h, w = _PACK * (recipe.height // 16), _PACK * (recipe.width // 16)
        noise = torch.cat([torch.randn((1, channels, h, w), generator=g, dtype=torch.float32) for g in generators])
        packed = pipe._pack_latents(noise, noise.shape[0], channels, h, w)
        return packed.to(device=device, dtype=compute_dtype(pipe.transformer))

    def call(self, pipe: Any, *, conditioning: Any, recipe: Any, latents: Any, generators: Sequence[Any],
             callback: Callable[..., dict[str, Any]]) -> Any:  # fmt: skip
        guidance = float(recipe.cfg_scale) if pipe.transformer.config.guidance_embeds else 0.0
        return pipe(
            **conditioning.kwargs,
            num_inference_steps=recipe.steps,
            guidance_scale=guidance,
            width=recipe.width,
            height=recipe.height,
            latents=latents,
            generator=list(generators) if len(generators) > 1 else generators[0],
            max_sequence_length=self.budget(pipe),
            callback_on_step_end=callback,
            output_type="pil",
        )


    def img2img(self, pipe: Any, *, conditioning: Any, recipe: Any, images: Any, strength: float,
                generators: Sequence[Any], callback: Callable[..., dict[str, Any]]) -> Any:  # fmt: skip
        """diffusers' ``FluxImg2ImgPipeline`` on the loaded components (flow matching: the input's
        latents are mixed with noise at the strength's sigma, then denoised from there)."""
        from diffusers import FluxImg2ImgPipeline

        runner = sibling_pipeline(pipe, FluxImg2ImgPipeline)
        guidance = float(recipe.cfg_scale) if pipe.transformer.config.guidance_embeds else 0.0
        return runner(
            **conditioning.kwargs,
            image=images,
            strength=strength,
            num_inference_steps=recipe.steps,
            guidance_scale=guidance,
            width=recipe.width,
            height=recipe.height,
            generator=list(generators) if len(generators) > 1 else generators[0],
            max_sequence_length=self.budget(pipe),
            callback_on_step_end=callback,
            output_type="pil",
        )

    def edit(self, pipe: Any, *, conditioning: Any, recipe: Any, images: Sequence[Any], latents: Any,
             generators: Sequence[Any], callback: Callable[..., dict[str, Any]]) -> Any:  # fmt: skip
        """diffusers' ``FluxKontextPipeline`` on the loaded components (a Kontext transformer has
        dev's keys): the first picture's latents are appended to the noise as reference tokens
        and the instruction steers the denoising. Its resizing is turned off (``_auto_resize``
        would pick Kontext's preferred ~1 MP size, and ``max_area`` the output's): the picture
        arrives at the recipe's size, and the output keeps it."""
        from diffusers import FluxKontextPipeline

        runner = sibling_pipeline(pipe, FluxKontextPipeline)
        guidance = float(recipe.cfg_scale) if pipe.transformer.config.guidance_embeds else 0.0
        return runner(
            **conditioning.kwargs,
            image=images[0],
            num_inference_steps=recipe.steps,
            guidance_scale=guidance,
            width=recipe.width,
            height=recipe.height,
            max_area=recipe.width * recipe.height,
            _auto_resize=False,
            latents=latents,
            generator=list(generators) if len(generators) > 1 else generators[0],
            max_sequence_length=self.budget(pipe),
            callback_on_step_end=callback,
            output_type="pil",
        )


RUNTIME = FluxRuntime()
