"""Turning recipes into PNGs: the engine's only entry point into torch and diffusers.

The job queue calls :meth:`Generator.run_batch` from a worker thread with one job, or with
several jobs that can share one pipeline call (same model, VAE, LoRA stack, size, steps,
sampler, CFG: :func:`engine.recipe.batching.batch_key`). Everything a recipe names is resolved inside the configured
folders and checked (kind, architecture, hash) before the model or any LoRA is touched, so
refusals are cheap and happen before any denoising step.

Each image's starting latents come from its own fresh CPU generator seeded ``seed + i``, and
ancestral samplers draw that image's noise from the same generator, so an image's PNG recipe
(its own seed, count 1) reproduces it. A batched call computes the same maths as batch-1
calls; only the floating-point blocking of the batched convolutions differs, so images match
a batch-1 rerun within a stated tolerance (``BATCH_TOLERANCE``), not always bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine import arch as _arch
from engine.cost_model import CostModel, Decision, model_calls
from engine.embeddings import EmbeddingStore, check_fits, resolve_embedding_files
from engine.inputs import InputStore
from engine.lora_cache import LoraCache, ResolvedLora, check_architecture
from engine.loras.reader import BoundLora, bind
from engine.model_cache import CachedModel, ModelCache
from engine.patcher import MODES, PATCHED, UNFUSED, StackEntry, StackWork, stack_key, stack_work
from engine.paths import resolve_within
from engine.picture_run import picture_call
from engine.pipelines import load_pipeline, load_vae
from engine.png_metadata import shareable_recipe, write_png
from engine.prediction import resolve_prediction
from engine.protocol import EngineError, ErrorCode, FileInfo, Recipe, architecture_label
from engine.recipe.a1111 import write_parameters
from engine.recipe.batching import architecture_batch_key, batch_key
from engine.recipe.picture import effective_steps
from engine.samplers import make_scheduler
from engine.support import RUNNABLE_ARCHITECTURES
from engine.tiled_denoise import tiled_denoising
from engine.validation import check_for_architecture, validate_recipe

log = logging.getLogger("engine.generate")

#: File descriptions kept by a generator; each holds metadata (tag lists can be ~100 kB).
INFO_CACHE_MAX = 1024
#: Measured seconds per model call kept by a generator, one per (model, latent size, batch
#: rows) seen, least recently measured dropped first: recipes choose sizes freely, so the
#: table would otherwise grow with every new shape for as long as the engine runs.
CALL_SECONDS_MAX = 256
#: A batched image may differ from its batch-1 rerun by at most this many 8-bit levels per
#: channel (mean absolute difference over the image); measured on the test models: 0.
BATCH_TOLERANCE = 1.0
#: Above this many pixels the VAE decodes in tiles (bounded memory; a visible-seam-free
#: blend, diffusers' own tiling). Below it, whole: tiling changes pixels slightly.
VAE_TILING_PIXELS = 1536 * 1536
#: Above this many pixels an upscale pass of a UNet model (SD 1.5, SDXL) denoises in tiles of
#: the UNet's training size (engine.tiled_denoise: MultiDiffusion, a feathered blend, no
#: seams): bounded activation memory. So an SDXL ×2 to 2048×2048 tiles, one to 1024×1024 does
#: not. Below it, whole: tiling changes pixels slightly. A fixed size rather than free memory
#: decides, so the same recipe gives the same image on every engine.
DENOISE_TILING_PIXELS = 1536 * 1536


@dataclass
class GenerationResult:
    images: list[bytes]
    seeds: list[int]
    timings: dict[str, Any] = field(default_factory=dict)


class _Cancelled(Exception):
    """Raised from the step callback to abandon the pipeline call at once."""


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError | MemoryError) or "out of memory" in str(exc).lower()


ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


def _plan_report(pipe: Any) -> dict[str, str] | None:
    from dataclasses import asdict, is_dataclass

    plan = getattr(pipe, "_atelier_memory_plan", None)
    return asdict(plan) if plan is not None and is_dataclass(plan) else None  # type: ignore[arg-type]


class Generator:
    """Owns the model cache, the LoRA cache and the patcher policy; one batch at a time."""

    def __init__(
        self,
        model_root: Path,
        lora_root: Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        cache_max_loras: int = 8,
        cache_max_bytes: int = 2 << 30,
        model_device_budget: int | None = None,
        model_host_budget: int | None = None,
        lora_mode: str = "auto",
        max_batch_images: int = 8,
        compile_unet: bool = False,
        channels_last: bool | None = None,
        embedding_root: Path | None = None,
        fp8: str = "auto",
    ) -> None:
        if lora_mode not in ("auto", *MODES):
            raise ValueError(f"lora_mode must be auto, patched or unfused (got {lora_mode!r})")
        if fp8 not in ("auto", "on", "off"):
            raise ValueError(f"fp8 must be auto, on or off (got {fp8!r})")
        self.model_root = Path(model_root)
        self.lora_root = Path(lora_root)
        #: Textual-inversion embeddings; the LoRA folder unless configured apart.
        self.embedding_root = Path(embedding_root) if embedding_root is not None else self.lora_root
        self.embeddings = EmbeddingStore()
        #: Input images of image-to-image jobs, by sha256 (``POST /inputs``; engine.inputs).
        self.inputs = InputStore()
        self.device = device
        self.dtype = dtype
        self.lora_mode = lora_mode
        self.max_batch_images = max(1, max_batch_images)
        self.compile_unet = compile_unet
        self.channels_last = str(device).startswith("cuda") if channels_last is None else channels_last
        self.vae_tiling_pixels = VAE_TILING_PIXELS
        self.denoise_tiling_pixels = DENOISE_TILING_PIXELS
        #: Latent positions per tile side of a tiled upscale pass; None: the UNet's sample size.
        self.denoise_tile: int | None = None
        #: fp8 transformer storage for runtimes that offer it (FLUX): "auto", "on" or "off".
        self.fp8 = fp8
        self.models = ModelCache(
            self._load_model, device=device, device_budget=model_device_budget,
            host_budget=model_host_budget,
        )  # fmt: skip
        self.loras = LoraCache(max_loras=cache_max_loras, max_bytes=cache_max_bytes)
        self.costs = CostModel(device=device, dtype=dtype)  # calibrated in the model's dtype
        self._lock = threading.Lock()
        self._info_cache: dict[tuple[str, tuple[tuple[str, int, int], ...]], FileInfo] = {}
        self._info_lock = threading.Lock()
        self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-prefetch")
        #: (model, latent pixels, UNet rows) -> seconds per model call at base speed (plain or
        #: patched jobs); an unfused job's extra time over it corrects the cost model.
        self._call_seconds: dict[tuple[str, int, int], float] = {}
        self._last_model: CachedModel | None = None
        self._last_model_name: str | None = None

    @property
    def current(self) -> CachedModel | None:
        """The model the last job used, while the cache still holds it."""
        model = self._last_model
        return model if model is not None and self.models.holds(model.key) else None

    # -- inspection -------------------------------------------------------------------------

    def inspect(self, path: Path) -> FileInfo:
        """Header facts and hashes, memoised on what the content depends on: hashing GBs per job
        is slow. A pipeline folder's key covers every file in it, so replacing its UNet weights
        changes the model's hash (and reloads it) like rewriting a single file does."""
        from engine.inspect import inspect_file

        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        key = (str(path), tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
        with self._info_lock:
            info = self._info_cache.get(key)
        if info is None:
            info = inspect_file(path)
            with self._info_lock:
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

    # -- loading ----------------------------------------------------------------------------

    def _load_model(self, path: Path) -> tuple[Any, str]:
        import torch

        pipe, arch = load_pipeline(path, device="cpu", dtype=self.dtype, model_root=self.model_root,
                                   device_budget=self.models.device_budget, fp8=self.fp8)  # fmt: skip
        runtime = _arch.runtime_of(arch)
        if self.channels_last:
            runtime.denoiser(pipe).to(memory_format=torch.channels_last)
        if self.compile_unet:
            # Patched weights keep their shapes and storage, so a stack switch never
            # recompiles; the unfused path's hooks would, so compiled models always patch.
            runtime.set_denoiser(pipe, torch.compile(runtime.denoiser(pipe)))
        return pipe, arch

    def prefetch(self, recipe: Recipe) -> Future[None]:
        """Read a coming job's LoRA files (and its model, if it would come from disk) now, on
        background threads, so its own start costs only the apply. Never raises: the job
        itself reports any problem when it runs. The future ends when the reads are queued
        (and, for files, done)."""
        return self._prefetcher.submit(self._prefetch, recipe)

    def _prefetch(self, recipe: Recipe) -> None:
        try:
            validate_recipe(recipe)
            model_path = resolve_within(self.model_root, recipe.model, allow_dir=True)
            model_info = self.inspect(model_path)
            stack = self._resolve_loras(recipe)
            if model_info.architecture in RUNNABLE_ARCHITECTURES:
                for lora in stack:
                    check_architecture(lora, model_info.architecture, recipe.model_label, model_info.variant)
            reads = self.loras.prefetch(stack)
            if not self.models.holds(model_info.sha256):
                model = self.models.prefetch(model_path, model_info.sha256, recipe.model,
                                             estimate_bytes=model_info.size_bytes)  # fmt: skip
                if model is not None:
                    reads.append(model)  # type: ignore[arg-type]
            for read in reads:
                read.exception()  # wait; a failure is the job's to report
        except Exception as exc:  # the job's own run reports it properly
            log.debug("prefetch of %s skipped: %s", recipe.model, exc)

    # -- the job ----------------------------------------------------------------------------

    def run(
        self,
        recipe: Recipe,
        *,
        on_step: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> GenerationResult:
        return self.run_batch([recipe], on_step=[on_step], should_cancel=[should_cancel])[0]

    def run_batch(
        self,
        recipes: Sequence[Recipe],
        *,
        on_step: Sequence[ProgressFn | None] | None = None,
        should_cancel: Sequence[CancelFn | None] | None = None,
    ) -> list[GenerationResult]:
        """Run jobs that share a :func:`batch_key` in one pipeline call (one result each).

        The call stops early only when every job in it asks to; a job cancelled alone in a
        shared call still gets its images here, and the job queue reports it cancelled.
        """
        if not recipes:
            return []
        on_step = list(on_step or [None] * len(recipes))
        should_cancel = list(should_cancel or [None] * len(recipes))
        with self._lock:
            try:
                return self._run(list(recipes), on_step, should_cancel)
            except EngineError:
                raise
            except _Cancelled:
                raise EngineError(ErrorCode.CANCELLED, "the job was cancelled") from None
            except Exception as exc:
                if _is_oom(exc):
                    self._free_device_memory()
                    first = recipes[0]
                    raise EngineError(
                        ErrorCode.OUT_OF_MEMORY,
                        f"the device ran out of memory ({first.width}x{first.height}, "
                        f"{sum(r.count for r in recipes)} image(s)); try a smaller size or fewer images",
                    ) from exc
                raise EngineError(ErrorCode.INTERNAL, f"generation failed: {type(exc).__name__}: {exc}") from exc

    def _run(
        self,
        recipes: list[Recipe],
        on_step: list[ProgressFn | None],
        should_cancel: list[CancelFn | None],
    ) -> list[GenerationResult]:
        started = time.perf_counter()
        for recipe in recipes:
            validate_recipe(recipe)
        first = recipes[0]
        if any(batch_key(r) != batch_key(first) for r in recipes):
            raise ValueError("run_batch needs jobs with one batch_key; run the others apart")
        model_path = resolve_within(self.model_root, first.model, allow_dir=True)
        model_info = self.inspect(model_path)
        model_name = first.model_label
        stack = self._resolve_loras(first)
        vae_path = resolve_within(self.model_root, first.vae) if first.vae else None
        vae_info = self.inspect(vae_path) if vae_path is not None else None
        # One batch_key means one set of embeddings and one prediction type for every job.
        embedding_files = resolve_embedding_files(first, self.embedding_root, self.inspect)
        prediction = resolve_prediction(first.prediction_type, model_info)
        # Refuse before loading anything when the header already tells the architecture.
        check_for_architecture(first, model_info.architecture, model_name)
        arch_key = architecture_batch_key(first, model_info.architecture)
        if any(architecture_batch_key(r, model_info.architecture) != arch_key for r in recipes):
            raise ValueError("run_batch needs jobs its architecture can batch together; run the others apart")
        if model_info.architecture in RUNNABLE_ARCHITECTURES:
            for lora in stack:
                check_architecture(lora, model_info.architecture, model_name, model_info.variant)
        if all(cancel is not None and cancel() for cancel in should_cancel):
            raise _Cancelled

        load_started = time.perf_counter()
        entry, source = self.models.get(model_path, model_info.sha256, first.model,
                                        estimate_bytes=model_info.size_bytes)  # fmt: skip
        self._last_model, self._last_model_name = entry, first.model
        model_s = time.perf_counter() - load_started
        pipe = entry.pipe
        for lora in stack:
            check_architecture(lora, entry.arch, model_name)
        self._use_vae(entry, vae_path, vae_info)
        lora_started = time.perf_counter()
        in_use = {lora.info.sha256 for lora in stack}
        entries = [
            StackEntry(self._bound(entry, lora, model_name, in_use), float(lora.ref.weight)) for lora in stack
        ]
        read_s = time.perf_counter() - lora_started
        total_images = sum(r.count for r in recipes)
        decision, apply_s, work = self._apply_stack(entry, entries, first, total_images)
        runtime = _arch.runtime_of(entry.arch)
        own_scheduler = getattr(runtime, "scheduler", None)  # the DiTs: flow-matching Euler
        if own_scheduler is not None:
            # The batch shares its shift (engine.recipe.batching); None keeps the model's own.
            pipe.scheduler = own_scheduler(entry.base_scheduler_config, first.sampler, prediction,
                                           shift=getattr(first, "shift", None))  # fmt: skip
        else:
            pipe.scheduler = make_scheduler(first.sampler, entry.base_scheduler_config, prediction)
        vectors = self._embedding_vectors(pipe, entry.arch, model_name, stack, embedding_files)
        self._memory_settings(pipe, first, total_images)

        init = self._input_picture(first)
        references = [self._held_picture(digest, "reference picture") for digest in first.references]
        prepared = time.perf_counter()
        outputs, used, denoise = self._denoise(entry, recipes, on_step, should_cancel, vectors, init=init,
                                               references=references)  # fmt: skip
        finished = time.perf_counter()
        self._learn_call_time(entry, first, total_images, denoise, decision.mode, work)
        results = []
        pinned_loras = tuple(
            replace(lora.ref, sha256=lora.info.sha256, a1111_hash=lora.info.a1111_hash) for lora in stack
        )
        pinned_embeddings = tuple(replace(ref, sha256=info.sha256) for ref, _, info in embedding_files)
        position = 0
        for recipe in recipes:
            images = outputs[position : position + recipe.count]
            names = set().union(*used[position : position + recipe.count])
            position += recipe.count
            # Each PNG carries the recipe of that one image (its own seed, count 1, the hashes
            # of every file used), so re-running it from the PNG gives that image.
            pinned = replace(recipe, count=1, loras=pinned_loras, embeddings=pinned_embeddings,
                             model_hash=model_info.autov2)  # fmt: skip
            seeds = [recipe.seed + i for i in range(recipe.count)]
            pngs = []
            for seed, image in zip(seeds, images, strict=True):
                image_recipe = replace(pinned, seed=seed)
                # A1111 lists in "TI hashes" only the embeddings this job's prompts really used.
                used_refs = tuple(e for e in image_recipe.embeddings if e.name in names)
                parameters = write_parameters(replace(image_recipe, embeddings=used_refs))
                # Names and hashes only: no path on the operator's disk leaves in an image.
                pngs.append(write_png(image, parameters, json.dumps(shareable_recipe(image_recipe), sort_keys=True)))
            results.append(GenerationResult(images=pngs, seeds=seeds))
        ended = time.perf_counter()
        timings: dict[str, Any] = {
            "prepare": prepared - started,
            "denoise": denoise,
            "encode": ended - finished,
            "total": ended - started,
            "model_load": model_s,
            "model_source": source,
            "lora_read": read_s,
            "lora_apply": apply_s,
            **decision.timings(),
            "batch_images": total_images,
            "batch_jobs": len(recipes),
        }
        for result in results:
            result.timings = dict(timings)
        return results

    # -- the pieces of a job ----------------------------------------------------------------

    def _bound(self, entry: CachedModel, lora: ResolvedLora, model_name: str, in_use: set[str]) -> BoundLora:
        sha = lora.info.sha256
        bound = entry.bound.get(sha)
        if bound is None or not self.loras.touch(sha):
            runtime = _arch.runtime_of(entry.arch)
            own_bind = getattr(runtime, "bind", None)
            if own_bind is not None and lora.info.architecture != entry.arch:
                # A file the header did not place (architecture unknown): read it with this
                # model's own reader so its layouts and fused layers are understood.
                parsed = runtime.read_lora(lora.path, label=lora.ref.display_name, sha256=sha)
            else:
                parsed = self.loras.get(lora, keep=in_use)
            if own_bind is not None:  # FLUX: BFL names, fused qkv/linear1 sliced onto diffusers'
                bound = own_bind(parsed, entry.pipe, model_name=model_name)
            else:
                bound = bind(parsed, entry.patcher.index, model_name=model_name, model_arch=entry.arch)
            entry.bound[sha] = bound
        # Bound files the LoRA cache has evicted would keep their tensors alive here.
        for stale in [s for s in entry.bound if s not in in_use and not self.loras.holds(s)]:
            del entry.bound[stale]
        return bound

    def _apply_stack(
        self, entry: CachedModel, stack: list[StackEntry], recipe: Recipe, images: int
    ) -> tuple[Decision, float, StackWork]:
        patcher = entry.patcher
        wanted = stack_key(stack)
        changed = wanted != patcher.applied[1]
        runtime = _arch.runtime_of(entry.arch)
        latent_pixels = runtime.positions(recipe)
        unet_batch = runtime.rows_per_image(recipe) * images  # rows per call, all calls
        work = stack_work(stack, patcher.positions_for(latent_pixels, unet_batch), patcher.patched_layers)
        forced = PATCHED if self.compile_unet else (None if self.lora_mode == "auto" else self.lora_mode)
        if not wanted:
            decision = Decision(PATCHED, "no LoRA", 0.0, 0.0)
        elif not changed and forced in (None, patcher.applied[0]):
            mode = patcher.applied[0]
            decision = Decision(mode, f"{mode}: this stack is already applied", 0.0, 0.0)
        else:
            decision = self.costs.decide(work, steps=effective_steps(recipe), sampler=recipe.sampler,
                                         changed=True, forced=forced)  # fmt: skip
        report = patcher.apply(stack, decision.mode)
        # Cached prompt encodings are valid for one LoRA state of the text encoders.
        entry.pipe._atelier_lora_state = patcher.applied
        if report["changed"] and decision.mode == PATCHED and work.measured and work.patch_macs:
            predicted, _ = self.costs.raw_prediction(work, steps=effective_steps(recipe), sampler=recipe.sampler)
            self.costs.record_patch(predicted, report["seconds"])
        elif report["changed"] and decision.mode == UNFUSED and work.patch_macs:
            self.costs.record_unfused_switch(work.low_rank_layers, work.restore_elements.get(UNFUSED, 0),
                                             report["seconds"])  # fmt: skip
        return decision, report["seconds"], work

    def _learn_call_time(
        self, entry: CachedModel, recipe: Recipe, images: int, denoise: float, mode: str, work: StackWork
    ) -> None:
        """Seconds per model call at base speed; an unfused job's excess teaches the cost model."""
        calls = model_calls(effective_steps(recipe), recipe.sampler)
        if calls <= 0 or denoise <= 0:
            return
        runtime = _arch.runtime_of(entry.arch)
        key = (entry.key, runtime.positions(recipe), images * runtime.rows_per_image(recipe))
        per_call = denoise / calls
        if mode == UNFUSED and entry.patcher.applied[1]:
            base = self._call_seconds.get(key)
            if base is not None and per_call > base and work.measured and work.patch_macs:
                no_restore = replace(work, restore_elements={})
                _, predicted = self.costs.raw_prediction(no_restore, steps=effective_steps(recipe), sampler=recipe.sampler)
                self.costs.record_unfused(predicted, (per_call - base) * calls)
            return
        previous = self._call_seconds.pop(key, None)  # re-inserted last: most recently measured
        self._call_seconds[key] = per_call if previous is None else 0.5 * (previous + per_call)
        while len(self._call_seconds) > CALL_SECONDS_MAX:
            del self._call_seconds[next(iter(self._call_seconds))]

    def _use_vae(self, entry: CachedModel, path: Path | None, info: FileInfo | None) -> None:
        key = info.sha256 if info is not None else ""
        if key == entry.vae_key:
            return
        if "" not in entry.vaes:
            entry.vaes[""] = entry.pipe.vae
        vae = entry.vaes.get(key)
        if vae is None:
            assert path is not None and info is not None
            if info.kind not in ("vae", "unknown", "checkpoint"):
                raise EngineError(
                    ErrorCode.INVALID_RECIPE,
                    f"'{path.name}' is a {info.kind} file, not a VAE; pick a VAE .safetensors file",
                )
            vae = load_vae(path, like=entry.vaes[""])
            entry.vaes[key] = vae
        entry.pipe.vae = vae
        entry.vae_key = key

    def _input_picture(self, recipe: Recipe) -> Any:
        """The recipe's input image, decoded (None for text-to-image); refused before any step
        when the engine does not hold it."""
        if not recipe.init_image:
            return None
        return self._held_picture(recipe.init_image, "input image")

    def _held_picture(self, digest: str, what: str) -> Any:
        """A picture the engine holds (``POST /inputs``), decoded; refused before any step when
        it is not held (an edit's reference pictures come the same way as its input)."""
        from engine.recipe.picture import PictureError, open_picture

        data = self.inputs.get(digest)
        if data is None:
            raise EngineError(ErrorCode.INVALID_RECIPE, f"the {what} {digest[:12]}… was not sent to this "
                              "engine (or was dropped since); send it with POST /inputs and submit the job again")  # fmt: skip
        try:
            image, _ = open_picture(data, f"the {what}")
        except PictureError as exc:
            raise EngineError(ErrorCode.INVALID_RECIPE, str(exc)) from exc
        return image

    def _memory_settings(self, pipe: Any, recipe: Recipe, images: int) -> None:
        """VAE tiling for large images; attention slicing only when device memory is short."""
        if recipe.width * recipe.height > self.vae_tiling_pixels:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()
        if str(self.device).startswith("cuda"):
            import torch

            free, total = torch.cuda.mem_get_info()
            if free < total * 0.2:
                pipe.enable_attention_slicing()
            else:
                pipe.disable_attention_slicing()

    def _second_pass_settings(self, pipe: Any, runtime: Any, recipe: Recipe, stack: ExitStack) -> None:
        """The upscale pass's memory settings: tiled VAE as for any image, and tiled denoising
        above ``denoise_tiling_pixels`` for a UNet (undone when ``stack`` closes). A
        transformer's pass stays whole: its attention is global, so tiles would change the image."""
        self._memory_settings(pipe, recipe, 1)
        spec = _arch.get(runtime.architecture)
        if spec is not None and spec.tiled_upscale and recipe.width * recipe.height > self.denoise_tiling_pixels:
            stack.enter_context(tiled_denoising(runtime.denoiser(pipe), tile=self.denoise_tile))

    def _denoise(
        self,
        entry: CachedModel,
        recipes: list[Recipe],
        on_step: list[ProgressFn | None],
        should_cancel: list[CancelFn | None],
        vectors: dict[str, Any],
        *,
        init: Any = None,
        references: Sequence[Any] = (),
    ) -> tuple[list[Any], list[set[str]], float]:
        """Every image of every job, in calls of at most ``max_batch_images`` images; with the
        embeddings each image's prompts used."""
        import torch

        first = recipes[0]
        runtime = _arch.runtime_of(entry.arch)
        encoder = runtime.prompt_encoder(pipe := entry.pipe, clip_skip=first.clip_skip, embeddings=vectors)
        used: list[set[str]] = []
        prompts, negatives, seeds, owners = [], [], [], []
        for index, recipe in enumerate(recipes):
            for i in range(recipe.count):
                prompts.append(recipe.prompt)
                negatives.append(recipe.negative_prompt)
                seeds.append(recipe.seed + i)
                owners.append(index)
        done_images = [0] * len(recipes)
        reported = [0] * len(recipes)
        images: list[Any] = []
        denoise = 0.0
        latent_pixels = runtime.positions(first)
        unet_batch = runtime.rows_per_image(first)
        limit = self.max_batch_images
        start = 0
        while start < len(prompts):
            chunk = slice(start, min(len(prompts), start + limit))
            chunk_owners = owners[chunk]
            step_state = {"reached": 0}

            def callback(_pipe: Any, index: int, _timestep: Any, kwargs: dict[str, Any],
                         chunk_owners: list[int] = chunk_owners, state: dict[str, int] = step_state) -> dict[str, Any]:  # fmt: skip
                # Some samplers (Heun) evaluate the model twice per step: their loop runs over
                # more timesteps than the recipe's steps, so progress is scaled to recipe steps.
                loop_length = len(_pipe.scheduler.timesteps) or first.steps
                reached = min(first.steps, (index + 1) * first.steps // loop_length)
                if reached > state["reached"]:
                    state["reached"] = reached
                    _report(reached, chunk_owners)
                entry.patcher.end_probe()
                if all(c is not None and c() for c in (should_cancel[o] for o in set(chunk_owners))):
                    raise _Cancelled
                return kwargs

            def _report(reached: int, chunk_owners: list[int]) -> None:
                for owner in sorted(set(chunk_owners)):
                    in_chunk = chunk_owners.count(owner)
                    done = done_images[owner] * first.steps + in_chunk * reached
                    if done > reported[owner] and on_step[owner] is not None:
                        reported[owner] = done
                        on_step[owner](done, recipes[owner].steps * recipes[owner].count)  # type: ignore[misc]

            generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds[chunk]]
            latents = runtime.prepare_latents(pipe, first, generators, device=self.device)
            entry.patcher.probe_positions(latent_pixels, unet_batch * (chunk.stop - chunk.start))
            call_started = time.perf_counter()
            try:
                with torch.inference_mode():
                    # A1111's prompt meaning, per image: a batch mate never changes an image.
                    conditioning = encoder.conditioning(
                        prompts[chunk], negatives[chunk], guidance=runtime.rows_per_image(first) > 1
                    )
                    with runtime.hooks(pipe, conditioning), ExitStack() as second_pass:
                        # Text-to-image goes straight to runtime.call; an input image or an
                        # upscale pass goes through engine.picture_run first (issue 20). The
                        # upscale pass may tile the UNet; leaving this block puts it back.
                        output = picture_call(runtime, pipe, conditioning=conditioning, recipe=first, latents=latents,
                                              generators=generators, callback=callback, init=init,
                                              references=references,
                                              before_second_pass=lambda r, s=second_pass: self._second_pass_settings(
                                                  pipe, runtime, r, s))  # fmt: skip
            except Exception as exc:
                entry.patcher.end_probe()
                if _is_oom(exc) and limit > 1:
                    # Batch size is bounded by device memory: halve it and try again.
                    self._free_device_memory()
                    limit = max(1, (chunk.stop - chunk.start) // 2)
                    self.max_batch_images = min(self.max_batch_images, limit)
                    log.warning("out of memory with %d images per call; retrying with %d",
                                chunk.stop - chunk.start, limit)  # fmt: skip
                    continue
                raise
            entry.patcher.end_probe()
            denoise += time.perf_counter() - call_started
            _report(first.steps, chunk_owners)  # a scheduler that ran fewer loop iterations
            for owner in chunk_owners:
                done_images[owner] += 1
            images.extend(output.images)
            for positive, negative in zip(conditioning.info, conditioning.negative_info, strict=True):
                used.append(set(positive.embeddings_used) | set(negative.embeddings_used))
            start = chunk.stop
        return images, used, denoise

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
        current = self.current
        # Health answers from the server's thread while a job may be loading or evicting:
        # list() copies the entries in one C call, so a concurrent change cannot break it.
        cached = list(self.loras.entries.values())
        return {
            "device": self.device,
            "dtype": self.dtype,
            "loaded_model": self._last_model_name if current is not None else None,
            "model_architecture": architecture_label(current.arch) if current is not None else None,
            # Where a FLUX model's text encoders run and how its transformer is stored, as the
            # engine chose from the device budget (None for SD models).
            "memory_plan": _plan_report(current.pipe) if current is not None else None,
            "models": [{"file": m["file"], "sha256": m["sha256"], "tier": m["tier"]} for m in self.models.report()],
            "model_cache": {
                "device_budget_bytes": self.models.device_budget,
                "host_budget_bytes": self.models.host_budget,
                "device_bytes": self.models.used("device"),
                "host_bytes": self.models.used("host"),
                "disk_loads": self.models.disk_loads,
            },
            "cached_loras": [{"file": e.file, "sha256": e.sha256, "bytes": e.size_bytes} for e in cached],
            "cached_lora_bytes": sum(e.size_bytes for e in cached),
            "lora_loads": self.loras.loads,
            "lora_mode": self.lora_mode,
            "cost_model": self.costs.snapshot(),
            "memory": memory,
        }

