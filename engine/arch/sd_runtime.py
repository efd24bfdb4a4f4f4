"""The runtime SD 1.5 and SDXL share: a UNet, CLIP text encoders, CFG with two rows.

What used to be spelled out in :mod:`engine.generate` (``pipe.unet``, ``cfg > 1`` means two
rows, ``/8`` latents of the UNet's channels) and :mod:`engine.prompting.encode` ("has
``text_encoder_2``" means SDXL) now sits behind :class:`engine.arch.runtime.Runtime`, so the
generator asks the architecture. The behaviour is the one those modules had.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from engine.arch.runtime import LoraTarget, sibling_pipeline
from engine.loras.keys import COMPONENTS

#: The components an SD LoRA may patch, with the pipeline attribute that holds each.
SD_COMPONENTS = COMPONENTS


class SdRuntime:
    """SD 1.5 and SDXL: one class, an instance per architecture (they differ in data: the
    pipeline class, the text encoders)."""

    def __init__(self, architecture: str) -> None:
        self.architecture = architecture

    def load(self, path: Path, *, device: str, dtype: str) -> Any:
        from engine.pipelines import load_sd_pipeline

        pipe, _arch = load_sd_pipeline(path, device=device, dtype=dtype)
        return pipe

    def denoiser(self, pipe: Any) -> Any:
        return pipe.unet

    def set_denoiser(self, pipe: Any, module: Any) -> None:
        pipe.unet = module

    def lora_components(self, pipe: Any) -> dict[str, Any]:
        found = {}
        for name in SD_COMPONENTS:
            module = getattr(pipe, name, None)
            if module is not None:
                found[name] = getattr(module, "_orig_mod", module)
        return found

    def map_lora_keys(self, pipe: Any, modules: Sequence[str]) -> dict[str, list[LoraTarget]] | None:
        # SD layers map one to one by flattened diffusers or SGM name: engine.loras.keys does it.
        return None

    def positions(self, recipe: Any) -> int:
        return (recipe.width // 8) * (recipe.height // 8)

    def rows_per_image(self, recipe: Any) -> int:
        return 2 if recipe.cfg_scale > 1 else 1

    def prompt_encoder(self, pipe: Any, *, clip_skip: int, embeddings: dict[str, Any]) -> Any:
        from engine.prompting.encode import PromptEncoder

        return PromptEncoder(pipe, clip_skip=clip_skip, embeddings=embeddings, architecture=self.architecture)

    def hooks(self, pipe: Any, conditioning: Any) -> AbstractContextManager[None]:
        from engine.prompting.encode import cross_attention_mask

        return cross_attention_mask(pipe.unet, conditioning)

    def latent_shape(self, pipe: Any, recipe: Any) -> tuple[int, int, int, int]:
        return (1, pipe.unet.config.in_channels, recipe.height // 8, recipe.width // 8)

    def prepare_latents(self, pipe: Any, recipe: Any, generators: Sequence[Any], *, device: Any) -> Any:
        import torch

        shape = self.latent_shape(pipe, recipe)
        latents = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
        return latents.to(device=device, dtype=pipe.unet.dtype)

    def call(
        self,
        pipe: Any,
        *,
        conditioning: Any,
        recipe: Any,
        latents: Any,
        generators: Sequence[Any],
        callback: Callable[..., dict[str, Any]],
    ) -> Any:
        return pipe(
            **conditioning.kwargs,
            num_inference_steps=recipe.steps,
            guidance_scale=recipe.cfg_scale,
            width=recipe.width,
            height=recipe.height,
            latents=latents,
            generator=list(generators) if len(generators) > 1 else generators[0],
            callback_on_step_end=callback,
            output_type="pil",
            # TCD's and DDIM's eta: the pipeline's own default, 0, would override TCD's 0.3.
            eta=_eta(recipe),
        )


    def img2img(
        self,
        pipe: Any,
        *,
        conditioning: Any,
        recipe: Any,
        images: Any,
        strength: float,
        generators: Sequence[Any],
        callback: Callable[..., dict[str, Any]],
    ) -> Any:
        """diffusers' image-to-image pipeline on this pipeline's own components (``from_pipe``
        shares them: the patched UNet, the job's scheduler, no copy of any weight). ``images``: the
        pipeline's [-1, 1] pixel tensor (engine.picture_run.as_pixels)."""
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

        kind = StableDiffusionXLImg2ImgPipeline if self.architecture == "sdxl" else StableDiffusionImg2ImgPipeline
        runner = sibling_pipeline(pipe, kind)
        return runner(
            **conditioning.kwargs,
            image=images,
            strength=strength,
            num_inference_steps=recipe.steps,
            guidance_scale=recipe.cfg_scale,
            generator=list(generators) if len(generators) > 1 else generators[0],
            callback_on_step_end=callback,
            output_type="pil",
            eta=_eta(recipe),
        )


def _eta(recipe: Any) -> float:
    """The recipe's eta, else its sampler's own default (0 for those without one)."""
    from engine.recipe.sampler_names import ETA_SAMPLERS

    eta = getattr(recipe, "eta", None)
    return float(eta) if eta is not None else ETA_SAMPLERS.get(recipe.sampler, 0.0)


SD15 = SdRuntime("sd15")
SDXL = SdRuntime("sdxl")

__all__ = ["SD15", "SDXL", "SD_COMPONENTS", "SdRuntime"]
