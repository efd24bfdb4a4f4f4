"""Image-to-image and the upscale pass, around each architecture's own pipeline call (torch).

:meth:`engine.generate.Generator._denoise` hands every pipeline call here. A text-to-image
recipe goes straight to ``runtime.call``; a recipe with an input image goes to the
architecture's ``img2img`` (diffusers' own image-to-image pipelines built with ``from_pipe``
on the loaded components, so LoRA patches, the scheduler and the prompt encodings are the
ones the job set up); a recipe with ``hires_scale`` then upscales each image with Lanczos and
runs image-to-image on it at ``hires_strength``: A1111's hires fix.

Two ends are decided here rather than left to diffusers, because diffusers' answers there are
not what a member asked for: strength 0 is the VAE's round trip (diffusers would run no step
and fail on an empty schedule), and strength 1 is text-to-image at the input's (resized) size,
so nothing of the input survives (a DDPM schedule's last timestep still keeps
``sqrt(alpha_bar_T)`` ≈ 7 % of the input's latents).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from engine.protocol import EngineError, ErrorCode, Recipe
from engine.recipe.picture import HIRES_STRENGTH, hires_size, img2img_steps, is_edit, resize_picture
from engine.validation import reference_problem


@dataclass
class PictureOutput:
    images: list[Any]


def size_multiple(architecture: str) -> int:
    from engine import arch

    spec = arch.get(architecture)
    return spec.size.multiple if spec is not None and spec.size is not None else 8


def as_pixels(pipe: Any, images: Sequence[Any], width: int, height: int) -> Any:
    """``images`` as the pipeline's [-1, 1] tensor, contiguous. Left to diffusers, a PIL
    image becomes a permuted (channels-last) view, the VAE's latents keep that layout, and
    every UNet step then ran about twice as slow on a CPU (measured on the tiny model)."""
    return pipe.image_processor.preprocess(list(images), height=height, width=width).contiguous()


def vae_round_trip(pipe: Any, images: Sequence[Any], width: int, height: int) -> list[Any]:
    """Each image through the VAE and back, no denoising: what strength 0 gives."""
    import torch

    vae = pipe.vae
    with torch.inference_mode():
        pixels = as_pixels(pipe, images, width, height).to(device=vae.device, dtype=vae.dtype)
        latents = vae.encode(pixels).latent_dist.mode()
        decoded = vae.decode(latents).sample
    return pipe.image_processor.postprocess(decoded, output_type="pil")


def img2img(
    runtime: Any,
    pipe: Any,
    *,
    conditioning: Any,
    recipe: Recipe,
    images: Sequence[Any],
    strength: float,
    latents: Any,
    generators: Sequence[Any],
    callback: Callable[..., dict[str, Any]],
) -> list[Any]:
    """``images`` (already at the recipe's size) denoised from ``strength``."""
    steps = img2img_steps(recipe.steps, strength)
    if steps == 0:
        return vae_round_trip(pipe, images, recipe.width, recipe.height)
    if strength >= 1:
        return list(runtime.call(pipe, conditioning=conditioning, recipe=recipe, latents=latents,
                                 generators=generators, callback=callback).images)  # fmt: skip
    own = getattr(runtime, "img2img", None)
    if own is None:
        raise EngineError(ErrorCode.INVALID_RECIPE, f"{runtime.architecture} models do not run image-to-image here")
    if int(recipe.steps * strength) < 1:
        # Diffusers would run int(steps * strength) = 0 steps and fail on an empty schedule: one
        # step from the strength's own noise level instead (a schedule of ceil(1/strength) steps).
        recipe = replace(recipe, steps=max(recipe.steps, math.ceil(1 / strength)))
    pixels = as_pixels(pipe, images, recipe.width, recipe.height)
    return list(own(pipe, conditioning=conditioning, recipe=recipe, images=pixels, strength=strength,
                    generators=generators, callback=callback).images)  # fmt: skip


def edits(runtime: Any, recipe: Recipe) -> bool:
    """True when the recipe gives an input picture to an edit model (FLUX.1 Kontext): its files
    look like another variant's, so the recipe's variant decides, never the file. Without a
    picture an edit model's recipe stays text-to-image, as it ran before edits (Kontext's own
    pipeline does the same when it is given no image)."""
    return is_edit(recipe, runtime.architecture)


def edit(
    runtime: Any,
    pipe: Any,
    *,
    conditioning: Any,
    recipe: Recipe,
    latents: Any,
    generators: Sequence[Any],
    callback: Callable[..., dict[str, Any]],
    init: Any | None,
    references: Sequence[Any] = (),
) -> list[Any]:
    """The input picture edited as the prompt says, at the recipe's size; ``references`` (decoded,
    in the recipe's order) are the further pictures an edit model may read beside it."""
    if init is None:
        raise EngineError(ErrorCode.INVALID_RECIPE, "the recipe's input picture was not sent to the engine")
    if len(references) != len(recipe.references):
        raise EngineError(ErrorCode.INVALID_RECIPE, "the recipe's reference pictures were not all sent to the engine")
    # More pictures than the model takes (Variant.max_images; FLUX.1 Kontext: 1): refused before
    # any step, by the same rule the queue applies.
    problem = reference_problem(recipe, runtime.architecture)
    if problem is not None:
        raise EngineError(ErrorCode.INVALID_RECIPE, problem)
    if recipe.hires_scale:
        raise EngineError(ErrorCode.INVALID_RECIPE, f"the upscale pass does not run after an edit ({recipe.variant}): "
                          "edit at the size you want, or upscale the result in a second, image-to-image job")  # fmt: skip
    own = getattr(runtime, "edit", None)
    if own is None:
        raise EngineError(ErrorCode.INVALID_RECIPE, f"{runtime.architecture} edit models do not run here yet: "
                          "pick a text-to-image model and use image-to-image instead")  # fmt: skip
    start = resize_picture(init, recipe.width, recipe.height, recipe.resize_mode)
    # Only the edited picture is fitted to the recipe's size. The references go as they came:
    # an edit model sizes its own (diffusers' QwenImageEditPlusPipeline scales each, keeping its
    # aspect ratio, to about 384x384 pixels for the vision-language encoder and 1024x1024 for
    # the VAE), so resizing them to the output's shape here would only distort them.
    return list(own(pipe, conditioning=conditioning, recipe=recipe, images=[start, *references], latents=latents,
                    generators=generators, callback=callback).images)  # fmt: skip


def picture_call(
    runtime: Any,
    pipe: Any,
    *,
    conditioning: Any,
    recipe: Recipe,
    latents: Any,
    generators: Sequence[Any],
    callback: Callable[..., dict[str, Any]],
    init: Any | None,
    references: Sequence[Any] = (),
    before_second_pass: Callable[[Recipe], None] | None = None,
) -> Any:
    """One pipeline call's images for ``recipe``: text-to-image, image-to-image from ``init``
    (a decoded RGB image, resized here as ``recipe.resize_mode`` says), then the upscale pass;
    or an edit of ``init`` with its ``references`` on an edit model."""
    if edits(runtime, recipe):
        return PictureOutput(edit(runtime, pipe, conditioning=conditioning, recipe=recipe, latents=latents,
                                  generators=generators, callback=callback, init=init, references=references))  # fmt: skip
    if recipe.references:
        raise EngineError(ErrorCode.INVALID_RECIPE, reference_problem(recipe, runtime.architecture)
                          or "reference pictures only go to an edit model, with an input picture")  # fmt: skip
    if not recipe.init_image and not recipe.hires_scale:
        return runtime.call(pipe, conditioning=conditioning, recipe=recipe, latents=latents,
                            generators=generators, callback=callback)  # fmt: skip
    if recipe.init_image:
        if init is None:
            raise EngineError(ErrorCode.INVALID_RECIPE, "the recipe's input image was not sent to the engine")
        start = resize_picture(init, recipe.width, recipe.height, recipe.resize_mode)
        images = img2img(runtime, pipe, conditioning=conditioning, recipe=recipe, images=[start] * len(generators),
                         strength=recipe.strength, latents=latents, generators=generators, callback=callback)  # fmt: skip
    else:
        images = list(runtime.call(pipe, conditioning=conditioning, recipe=recipe, latents=latents,
                                   generators=generators, callback=callback).images)  # fmt: skip
    if recipe.hires_scale:
        from PIL import Image

        width, height = hires_size(recipe.width, recipe.height, recipe.hires_scale, size_multiple(runtime.architecture))
        second = replace(recipe, width=width, height=height, steps=recipe.hires_steps or recipe.steps,
                         hires_scale=0.0, init_image="")  # fmt: skip
        if before_second_pass is not None:
            before_second_pass(second)  # e.g. tiled VAE at the larger size
        upscaled = [image.resize((width, height), Image.Resampling.LANCZOS) for image in images]
        strength = recipe.hires_strength if recipe.hires_strength is not None else HIRES_STRENGTH
        second_latents = runtime.prepare_latents(pipe, second, generators, device=latents.device) if strength >= 1 else latents
        images = img2img(runtime, pipe, conditioning=conditioning, recipe=second, images=upscaled, strength=strength,
                         latents=second_latents, generators=generators, callback=callback)  # fmt: skip
    return PictureOutput(images)


__all__ = ["PictureOutput", "edit", "edits", "img2img", "picture_call", "size_multiple", "vae_round_trip"]
