"""The engine-side half of an architecture: what :class:`engine.generate.Generator` asks.

Each runnable architecture names a module (``Architecture.runtime``) exposing ``RUNTIME`` (or
``"module:attribute"``), an object with these methods; :func:`engine.arch.runtime_of` imports it. The generator, the LoRA
binder and the prompt encoder ask it instead of testing ``arch in ("sd15", "sdxl")`` or
``hasattr(pipe, "text_encoder_2")``, so a new architecture brings its own loading, LoRA
targets, prompt encoding, latents and pipeline call without touching them.

Contract, for implementers (SD 1.5/SDXL: :mod:`engine.arch.sd_runtime`; FLUX:
``engine/arch/flux/pipeline.py`` with ``loading.py`` and ``lora_keys.py`` beside it):

- ``load(path, *, device, dtype) -> pipe``: a diffusers pipeline from a ``.safetensors`` file
  or a diffusers folder, offline (configs shipped in ``data/configs/``), safetensors only,
  errors as :class:`engine.protocol.EngineError` (``corrupt_file``, ``not_safetensors``,
  ``out_of_memory``, ``arch_mismatch``).
- ``denoiser(pipe) -> nn.Module``: the module the steps run (``pipe.unet``,
  ``pipe.transformer``); the generator moves, compiles and sizes it.
  ``set_denoiser(pipe, module)`` puts a wrapped one (``torch.compile``) in its place.
- ``lora_components(pipe) -> {component: nn.Module}``: the modules a LoRA may patch, under
  the component names its files use ("unet", "text_encoder", "text_encoder_2",
  "transformer"). A compiled module's ``_orig_mod`` is what gets patched.
- ``map_lora_keys(pipe, modules) -> {file module: [LoraTarget, ...]}``: where each of a LoRA
  file's module names lands. One file module may land on several targets, each a row slice
  of its ΔW (a fused ``qkv`` or ``linear1`` split onto diffusers' ``to_q/to_k/to_v`` and
  ``proj_mlp``); a name it cannot place is left out, and the caller reports how much
  matched. SD layers map one to one (``None`` here: the patcher's name index does it).
- ``positions(recipe) -> int``: spatial positions the denoiser's layers see per row (SD:
  ``(w/8)*(h/8)`` latent pixels; FLUX: ``(w/16)*(h/16)`` packed image tokens): the LoRA cost
  model's unit.
- ``rows_per_image(recipe) -> int``: denoiser rows per image per step (2 under CFG > 1, 1
  for distilled or no guidance): the cost model and batch limits read it.
- ``prompt_encoder(pipe, *, clip_skip, embeddings)``: an object with
  ``conditioning(prompts, negatives, *, guidance) -> Conditioning`` (``.kwargs`` for the
  pipeline call, ``.info``/``.negative_info`` per image) and ``hooks(pipe, conditioning)``,
  a context manager for anything the call needs around it (SD's cross-attention mask).
- ``prepare_latents(pipe, recipe, generators, *, device) -> Tensor``: initial noise, one
  generator per image so a batch mate never changes an image; the shape is the
  architecture's (SD: ``(n, 4, h/8, w/8)``; FLUX packs 2x2 patches of 16 channels).
- ``call(pipe, *, conditioning, recipe, latents, generators, callback) -> output``: the
  pipeline call, guidance passed the way the architecture reads it, ``output.images`` PIL.

Optional, asked with ``getattr`` (FLUX has them, SD does not):

- ``load`` may take ``model_root``, ``device_budget`` and ``fp8`` keywords
  (:func:`engine.pipelines.load_pipeline` passes them to a runtime other than SD's): FLUX
  finds its shared component files in the model folder and chooses its memory plan.
- ``place(pipe, device)``: how the model cache moves the model between tiers (FLUX keeps CPU
  text encoders on the CPU and never moves shared components to the host tier).
- ``read_lora(path, *, label, sha256) -> LoraFile`` and ``bind(lora, pipe, *, model_name)
  -> BoundLora``: the architecture's own LoRA reader and binder (FLUX: every FLUX layout, fused
  layers sliced), used by the LoRA cache and the generator instead of the SD ones.
- ``scheduler(base_config, sampler, prediction) -> scheduler``: the architecture's sampler
  (FLUX: flow-matching Euler) instead of :func:`engine.samplers.make_scheduler`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class LoraTarget:
    """Where (part of) one LoRA file module's ΔW goes."""

    component: str
    #: The module path inside the component ("transformer_blocks.0.attn.to_q").
    module: str
    #: Rows [start, stop) of the file module's ΔW that belong to this target; None: all.
    rows: tuple[int, int] | None = None
    #: The ΔW's two row halves swap places (BFL's (shift, scale) modulation is diffusers' (scale, shift)).
    swap_halves: bool = False


@runtime_checkable
class Runtime(Protocol):
    """See the module docstring for each method's contract."""

    architecture: str

    def load(self, path: Path, *, device: str, dtype: str) -> Any: ...

    def denoiser(self, pipe: Any) -> Any: ...

    def set_denoiser(self, pipe: Any, module: Any) -> None: ...

    def lora_components(self, pipe: Any) -> dict[str, Any]: ...

    def map_lora_keys(self, pipe: Any, modules: Sequence[str]) -> dict[str, list[LoraTarget]] | None: ...

    def positions(self, recipe: Any) -> int: ...

    def rows_per_image(self, recipe: Any) -> int: ...

    def prompt_encoder(self, pipe: Any, *, clip_skip: int, embeddings: dict[str, Any]) -> Any: ...

    def hooks(self, pipe: Any, conditioning: Any) -> AbstractContextManager[None]: ...

    def prepare_latents(self, pipe: Any, recipe: Any, generators: Sequence[Any], *, device: Any) -> Any: ...

    def call(
        self,
        pipe: Any,
        *,
        conditioning: Any,
        recipe: Any,
        latents: Any,
        generators: Sequence[Any],
        callback: Callable[..., dict[str, Any]],
    ) -> Any: ...


def sibling_pipeline(pipe: Any, kind: type[Any], **extra: Any) -> Any:
    """``kind`` (an image-to-image or edit pipeline) on ``pipe``'s components, built once per
    loaded pipeline and kept on it: diffusers' ``from_pipe`` walks every component's signature
    and device hooks, about 40 ms a job on the tiny SD 1.5 (a tenth of its image-to-image job,
    measured with tests.bench.picture). The components are re-read from ``pipe`` on every call,
    so the job's own scheduler and a denoiser swapped since (compiled, tiled) are the ones that
    run; ``extra`` are components ``pipe`` lacks (Qwen-Image-Edit's processor), given at build."""
    kept: dict[type[Any], Any] = pipe.__dict__.setdefault("_atelier_siblings", {})
    runner = kept.get(kind)
    if runner is None:
        runner = kept[kind] = kind.from_pipe(pipe, **extra)
        runner.set_progress_bar_config(disable=True)
    own = runner.components
    for name, component in pipe.components.items():
        if name in own and own[name] is not component:
            setattr(runner, name, component)
    return runner


__all__ = ["LoraTarget", "Runtime", "sibling_pipeline"]
