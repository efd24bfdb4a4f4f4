"""Qwen-Image-Edit and -2509 on the loaded Qwen-Image components: the picture read twice.

diffusers' ``QwenImageEditPipeline`` / ``QwenImageEditPlusPipeline`` are built with ``from_pipe``
on the loaded text-to-image pipeline (the same transformer with its LoRA patches, VAE, text
encoder and scheduler) plus Qwen2.5-VL's processor from the repository's ``processor/`` folder.
Each picture is read twice, as the authors' pipelines do: by the text encoder's vision tower
beside the instruction (Qwen-Image-Edit at about 1 MP, -2509 at about 384x384 per picture, each
picture named "Picture N" in the prompt), and as VAE latents appended to the noise as reference
tokens (about 1 MP each). The output is the recipe's size (``width``/``height``), its noise the
engine's own seeded latents.

What is decided here rather than left to the pipelines: the prompts are encoded here, one image
row at a time, with the text encoder wherever the memory plan put it (the pipelines' own
encoding would run it on the transformer's device), then handed to the pipeline as embeddings;
the negative prompt is the recipe's, one space when empty (the authors' default), read only
when true CFG runs (CFG above 1). Each image runs as its own call: -2509's pipeline takes one
prompt per call, and a batch mate never changes an image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.arch.flux.pipeline import compute_dtype
from engine.arch.runtime import sibling_pipeline
from engine.protocol import EngineError, ErrorCode

#: The repository folder (``Qwen/Qwen-Image-Edit``'s ``processor/``) the edit models read.
PROCESSOR_FOLDER = "processor"
#: The authors' ``max_sequence_length`` (the pipelines only check it; the picture's tokens come on top).
MAX_SEQUENCE_LENGTH = 512
PLUS = "edit_plus"


def has_processor(folder: Path | None) -> bool:
    from engine.arch.qwen_image.processor import MARKER

    return folder is not None and (folder / MARKER).is_file() and any(folder.glob("tokenizer*.json"))


def processor_of(pipe: Any) -> Any:
    """The processor for ``pipe``'s edits, loaded once from the folder found at load time."""
    found = getattr(pipe, "_atelier_processor", None)
    if found is not None:
        return found
    folder: Path | None = getattr(pipe, "_atelier_processor_folder", None)
    if not has_processor(folder):
        raise EngineError(ErrorCode.UNKNOWN_FILE, "this Qwen-Image-Edit model has no processor/ folder (Qwen2.5-VL's "
                          "preprocessor_config.json and tokenizer, which read the picture): copy the processor/ folder "
                          "of the Qwen/Qwen-Image-Edit diffusers repository into the model's diffusers folder, or into "
                          "the models folder's 'qwen-image-components/' for a single-file model")  # fmt: skip
    from engine.arch.qwen_image.processor import processor_from_folder

    assert folder is not None
    pipe._atelier_processor = processor = processor_from_folder(folder)
    return processor


def _condition_images(runner: Any, images: Sequence[Any], plus: bool) -> Any:
    """The pictures as the pipeline's text encoder sees them, sized by the pipeline module's own
    rule (read from diffusers, so they follow the library)."""
    if plus:
        from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as module

        sized = []
        for image in images:
            width, height = module.calculate_dimensions(module.CONDITION_IMAGE_SIZE, image.width / image.height)
            sized.append(runner.image_processor.resize(image, height, width))
        return sized
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as module

    image = images[0]
    width, height, _ = module.calculate_dimensions(1024 * 1024, image.width / image.height)
    return runner.image_processor.resize(image, height, width)


def _embeds(runner: Any, text: str, condition: Any, device: Any, dtype: Any) -> tuple[Any, Any]:
    encoder = runner.text_encoder
    embeds, mask = runner._get_qwen_prompt_embeds([text], image=condition, device=encoder.device)
    return embeds.to(device, dtype), mask.to(device)


def run_edit(pipe: Any, *, conditioning: Any, recipe: Any, images: Sequence[Any], latents: Any,
             generators: Sequence[Any], callback: Callable[..., dict[str, Any]]) -> Any:  # fmt: skip
    import torch
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline
    from diffusers.pipelines.qwenimage.pipeline_output import QwenImagePipelineOutput

    from engine import arch

    spec = arch.get("qwen_image")
    variant = spec.variants.get(recipe.variant or "") if spec is not None else None
    if variant is None or variant.capabilities is None or "edit" not in variant.capabilities:
        raise EngineError(ErrorCode.INVALID_RECIPE, f"'{recipe.variant}' is not a Qwen-Image edit model: register the "
                          "model as Qwen-Image-Edit (variant edit) or Qwen-Image-Edit-2509 (variant edit_plus)")  # fmt: skip
    images = list(images)
    if not images:
        raise EngineError(ErrorCode.INVALID_RECIPE, f"{variant.label} edits a picture, and none was sent")
    if len(images) > variant.max_images:
        plus = spec.variants[PLUS] if spec is not None else variant
        hint = (f"send at most {variant.max_images}" if variant.name == PLUS else
                f"send one, or use a {plus.label} model, which takes up to {plus.max_images}")  # fmt: skip
        raise EngineError(ErrorCode.INVALID_RECIPE, f"{variant.label} takes at most {variant.max_images} "
                          f"picture{'s' if variant.max_images > 1 else ''} and this edit has {len(images)}: {hint}")  # fmt: skip
    if conditioning.texts is None:
        raise EngineError(ErrorCode.INTERNAL, "the prompts' text did not reach the Qwen-Image edit")
    plus = variant.name == PLUS
    kind = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    runner = sibling_pipeline(pipe, kind, processor=processor_of(pipe))
    images = [image.convert("RGB") for image in images]
    condition = _condition_images(runner, images, plus)
    device, dtype = latents.device, compute_dtype(pipe.transformer)
    prompts, negatives = conditioning.texts
    out: list[Any] = []
    with torch.inference_mode():
        for row, generator in enumerate(generators):
            kwargs: dict[str, Any] = {}
            kwargs["prompt_embeds"], kwargs["prompt_embeds_mask"] = _embeds(runner, prompts[row], condition, device, dtype)
            if conditioning.guidance:
                kwargs["negative_prompt_embeds"], kwargs["negative_prompt_embeds_mask"] = _embeds(
                    runner, negatives[row], condition, device, dtype)  # fmt: skip
            result = runner(
                **kwargs,
                image=images if plus else images[0],
                true_cfg_scale=float(recipe.cfg_scale) if conditioning.guidance else 1.0,
                num_inference_steps=recipe.steps,
                width=recipe.width,
                height=recipe.height,
                latents=latents[row : row + 1],
                generator=generator,
                max_sequence_length=MAX_SEQUENCE_LENGTH,
                callback_on_step_end=callback,
                output_type="pil",
            )
            out.extend(result.images)
    return QwenImagePipelineOutput(images=out)


__all__ = ["MAX_SEQUENCE_LENGTH", "PROCESSOR_FOLDER", "has_processor", "processor_of", "run_edit"]
