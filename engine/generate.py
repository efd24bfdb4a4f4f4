"""Turning one recipe into PNGs: the engine's only entry point into torch and diffusers.

The server calls :meth:`Generator.run` from a worker thread. Everything a recipe names is
resolved inside the configured folders and checked (kind, architecture, hash) before the model
or any LoRA is touched, so refusals are cheap and happen before any denoising step. Each image
gets its own fresh CPU generator seeded ``seed + i``, which makes the same recipe give the same
bytes on the same machine whatever ran before it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine.embeddings import EmbeddingStore, check_fits, resolve_embedding_files
from engine.lora_cache import LoraCache, ResolvedLora
from engine.paths import resolve_within
from engine.pipelines import ModelSlot
from engine.png_metadata import shareable_recipe, write_png
from engine.prediction import resolve_prediction
from engine.protocol import EngineError, ErrorCode, FileInfo, Recipe, architecture_label
from engine.recipe.a1111 import write_parameters
from engine.samplers import make_scheduler
from engine.validation import validate_recipe

#: File descriptions kept by a generator; each holds metadata (tag lists can be ~100 kB).
INFO_CACHE_MAX = 1024


@dataclass
class GenerationResult:
    images: list[bytes]
    seeds: list[int]
    timings: dict[str, float] = field(default_factory=dict)


def encode_recipe_prompts(pipe: Any, recipe: Recipe, vectors: dict[str, Any]) -> Any:
    """The recipe's prompt and negative with A1111's meaning (see :mod:`engine.prompting`)."""
    from engine.prompting.encode import PromptEncoder

    encoder = PromptEncoder(pipe, clip_skip=recipe.clip_skip, embeddings=vectors)
    return encoder.conditioning([recipe.prompt], [recipe.negative_prompt], guidance=recipe.cfg_scale > 1)


def used_embedding_hashes(conditioning: Any, files: list[Any]) -> dict[str, str]:
    """A1111's ``TI hashes``: name -> first 12 hex of the file's sha256, for embeddings used."""
    used = {n for info in (*conditioning.info, *conditioning.negative_info) for n in info.embeddings_used}
    return {ref.name: info.sha256[:12] for ref, _, info in files if ref.name in used}


class _Cancelled(Exception):
    """Raised from the step callback to abandon the pipeline call at once."""


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class Generator:
    """Owns the loaded model and the LoRA cache; one job at a time."""

    def __init__(
        self,
        model_root: Path,
        lora_root: Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        cache_max_loras: int = 8,
        cache_max_bytes: int = 2 << 30,
        embedding_root: Path | None = None,
    ) -> None:
        self.model_root = Path(model_root)
        self.lora_root = Path(lora_root)
        #: Textual-inversion embeddings; the LoRA folder unless configured apart.
        self.embedding_root = Path(embedding_root) if embedding_root is not None else self.lora_root
        self.embeddings = EmbeddingStore()
        self.device = device
        self.dtype = dtype
        self.slot = ModelSlot(device=device, dtype=dtype)
        self.loras = LoraCache(max_loras=cache_max_loras, max_bytes=cache_max_bytes)
        self._lock = threading.Lock()
        self._info_cache: dict[tuple[str, tuple[tuple[str, int, int], ...]], FileInfo] = {}
        self._base_scheduler_config: Any = None
        self._loaded_name: str | None = None

    # -- inspection -------------------------------------------------------------------------

    def inspect(self, path: Path) -> FileInfo:
        """Header facts and hashes, memoised on what the content depends on: hashing GBs per job
        is slow. A pipeline folder's key covers every file in it, so replacing its UNet weights
        changes the model's hash (and reloads it) like rewriting a single file does."""
        from engine.inspect import inspect_file

        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        key = (str(path), tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
        info = self._info_cache.get(key)
        if info is None:
            info = inspect_file(path)
            if len(self._info_cache) >= INFO_CACHE_MAX:  # rewritten files leave stale keys
                self._info_cache.pop(next(iter(self._info_cache)))
            self._info_cache[key] = info
        return info

    def _resolve_loras(self, recipe: Recipe) -> list[ResolvedLora]:
        resolved = []
        for ref in recipe.loras:
            path = resolve_within(self.lora_root, ref.file)
            info = self.inspect(path)
            if ref.sha256 and ref.sha256.lower() != info.sha256:
                raise EngineError(
                    ErrorCode.UNKNOWN_FILE,
                    f"LoRA '{ref.display_name}' ({ref.file}) changed on disk since it was registered "
                    f"(sha256 {info.sha256[:12]}…, expected {ref.sha256[:12]}…); re-register it",
                )
            resolved.append(ResolvedLora(ref=ref, path=path, info=info))
        return resolved

    # -- the job ----------------------------------------------------------------------------

    def run(
        self,
        recipe: Recipe,
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        with self._lock:
            try:
                return self._run(recipe, on_step, should_cancel)
            except EngineError:
                raise
            except _Cancelled:
                raise EngineError(ErrorCode.CANCELLED, "the job was cancelled") from None
            except Exception as exc:
                if _is_oom(exc):
                    self._free_device_memory()
                    raise EngineError(
                        ErrorCode.OUT_OF_MEMORY,
                        f"the device ran out of memory ({recipe.width}x{recipe.height}, "
                        f"{recipe.count} image(s)); try a smaller size or fewer images",
                    ) from exc
                raise EngineError(ErrorCode.INTERNAL, f"generation failed: {type(exc).__name__}: {exc}") from exc

    def _run(
        self,
        recipe: Recipe,
        on_step: Callable[[int, int], None] | None,
        should_cancel: Callable[[], bool] | None,
    ) -> GenerationResult:
        import torch

        from engine.prompting.encode import cross_attention_mask

        started = time.perf_counter()
        validate_recipe(recipe)
        model_path = resolve_within(self.model_root, recipe.model, allow_dir=True)
        model_info = self.inspect(model_path)
        model_name = recipe.model_label
        stack = self._resolve_loras(recipe)
        embedding_files = resolve_embedding_files(recipe, self.embedding_root, self.inspect)
        prediction = resolve_prediction(recipe.prediction_type, model_info)
        # Refuse before loading anything when the header already tells the architecture.
        if model_info.architecture in ("sd15", "sdxl"):
            from engine.lora_cache import check_architecture

            for lora in stack:
                check_architecture(lora, model_info.architecture, model_name)
        if should_cancel is not None and should_cancel():
            raise _Cancelled

        if not self.slot.holds(model_info.sha256):
            # The adapters die with the old pipeline; letting the cache keep a reference to it
            # would hold two models in memory while the next one loads (or for good, if it fails).
            self.loras.bind(None)
        loaded, fresh = self.slot.get(model_path, key=model_info.sha256)
        pipe = loaded.pipe
        if fresh:
            self._base_scheduler_config = pipe.scheduler.config
            self._loaded_name = recipe.model
        self.loras.activate(pipe, stack, model_arch=loaded.arch, model_name=model_name)
        pipe.scheduler = make_scheduler(recipe.sampler, self._base_scheduler_config, prediction)
        vectors = self._embedding_vectors(pipe, loaded.arch, model_name, stack, embedding_files)

        total = recipe.steps * recipe.count
        done = 0
        first_step_at: float | None = None
        denoise = 0.0
        encode = 0.0

        image_base = 0

        def callback(_pipe: Any, index: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            # Some samplers (Heun) evaluate the model twice per step: their loop runs over more
            # timesteps than the recipe's steps, so progress is scaled back to recipe steps.
            nonlocal done
            loop_length = len(_pipe.scheduler.timesteps) or recipe.steps
            reached = image_base + min(recipe.steps, (index + 1) * recipe.steps // loop_length)
            if reached > done:
                done = reached
                if on_step is not None:
                    on_step(done, total)
            if should_cancel is not None and should_cancel():
                raise _Cancelled
            return kwargs

        images: list[bytes] = []
        seeds = [recipe.seed + i for i in range(recipe.count)]
        # Each PNG carries the recipe of that one image (its own seed, count 1, the hashes of
        # every file actually used), so re-running it from the PNG gives the same pixels.
        pinned_loras = tuple(
            replace(lora.ref, sha256=lora.info.sha256, a1111_hash=lora.info.a1111_hash) for lora in stack
        )
        pinned_embeddings = tuple(replace(ref, sha256=info.sha256) for ref, _, info in embedding_files)
        pinned = replace(
            recipe, count=1, loras=pinned_loras, embeddings=pinned_embeddings, model_hash=model_info.autov2
        )
        latent_shape = (1, pipe.unet.config.in_channels, recipe.height // 8, recipe.width // 8)
        with torch.inference_mode():
            conditioning = encode_recipe_prompts(pipe, recipe, vectors)
            ti_hashes = used_embedding_hashes(conditioning, embedding_files)
            for seed in seeds:
                generator = torch.Generator(device="cpu").manual_seed(seed)
                latents = torch.randn(latent_shape, generator=generator, dtype=torch.float32)
                latents = latents.to(device=self.device, dtype=pipe.unet.dtype)
                call_started = time.perf_counter()
                if first_step_at is None:
                    first_step_at = call_started
                image_base = done
                with cross_attention_mask(pipe.unet, conditioning):
                    output = pipe(
                        **conditioning.kwargs,
                        num_inference_steps=recipe.steps,
                        guidance_scale=recipe.cfg_scale,
                        width=recipe.width,
                        height=recipe.height,
                        latents=latents,
                        generator=generator,
                        callback_on_step_end=callback,
                        output_type="pil",
                    )
                if done < image_base + recipe.steps:  # a scheduler that ran fewer loop iterations
                    done = image_base + recipe.steps
                    if on_step is not None:
                        on_step(done, total)
                finished = time.perf_counter()
                denoise += finished - call_started
                image_recipe = replace(pinned, seed=seed)
                # A1111 lists in "TI hashes" only the embeddings the prompts really used.
                used = tuple(e for e in image_recipe.embeddings if e.name in ti_hashes)
                parameters = write_parameters(replace(image_recipe, embeddings=used))
                # Names and hashes only: no path on the operator's disk leaves in an image.
                recipe_json = json.dumps(shareable_recipe(image_recipe), sort_keys=True)
                images.append(write_png(output.images[0], parameters, recipe_json))
                encode += time.perf_counter() - finished
        ended = time.perf_counter()
        prepare = (first_step_at or ended) - started
        return GenerationResult(
            images=images,
            seeds=seeds,
            timings={"prepare": prepare, "denoise": denoise, "encode": encode, "total": ended - started},
        )

    def _embedding_vectors(
        self, pipe: Any, arch: str, model_name: str, stack: list[ResolvedLora], files: list[Any]
    ) -> dict[str, Any]:
        """Vectors of every embedding the prompt may call: the recipe's and those bundled in its
        LoRAs (OneTrainer), each checked against the model's text encoders."""
        vectors: dict[str, Any] = {}
        for lora in stack:
            for name, found in self.embeddings.bundled(lora.path, lora.info).items():
                check_fits(name, found, pipe, arch, model_name)
                vectors[name] = found
        for ref, path, info in files:
            found = self.embeddings.vectors(path, info)
            check_fits(ref.name, found, pipe, arch, model_name)
            vectors[ref.name] = found
        return vectors

    def _free_device_memory(self) -> None:
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass

    # -- health -----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        import psutil

        memory: dict[str, Any] = {"rss_bytes": psutil.Process().memory_info().rss}
        try:
            import torch

            if torch.cuda.is_available() and self.device.startswith("cuda"):
                memory["device_allocated_bytes"] = torch.cuda.memory_allocated()
                memory["device_reserved_bytes"] = torch.cuda.memory_reserved()
                free, total = torch.cuda.mem_get_info()
                memory["device_free_bytes"] = free
                memory["device_total_bytes"] = total
        except Exception:
            pass
        current = self.slot.current
        # Health answers from the server's thread while a job may be loading or evicting LoRAs:
        # list() copies the entries in one C call, where a comprehension over the live view could
        # meet "OrderedDict mutated during iteration" and lose the whole report.
        cached = list(self.loras.entries.values())
        return {
            "device": self.device,
            "dtype": self.dtype,
            "loaded_model": self._loaded_name if current is not None else None,
            "model_architecture": architecture_label(current.arch) if current is not None else None,
            "cached_loras": [
                {"file": e.file, "sha256": e.sha256, "bytes": e.size_bytes, "adapter": e.adapter}
                for e in cached
            ],
            "cached_lora_bytes": sum(e.size_bytes for e in cached),
            "lora_loads": self.loras.loads,
            "memory": memory,
        }
