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

from dataclasses import dataclass
from typing import Any

from engine.protocol import EngineError, ErrorCode

#: Per variant: (steps, distilled guidance or None, T5 token budget).
DEFAULTS = {"dev": (28, 3.5, 512), "schnell": (4, None, 256)}
SIZE_MULTIPLE = 16


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
