"""A recipe as text people can copy: a ``/imagine`` line and AUTOMATIC1111 ``parameters``.

The ``/imagine`` line reproduces the image in Discord; the parameters text is what A1111,
Civitai and most image viewers read from a PNG, so an image made here can be recreated
elsewhere. Plain string work, no torch.
"""

from __future__ import annotations

import json

from engine.protocol import Recipe

#: How many LoRAs ``/imagine`` takes as options; the rest go inline in the prompt.
LORA_SLOTS = 3


def _weight(value: float) -> str:
    return f"{value:g}"


def _a1111_value(value: str) -> str:
    """A1111 JSON-quotes values that would otherwise break its ``key: value, ...`` line."""
    if any(c in value for c in ",:\n\""):
        return json.dumps(value, ensure_ascii=False)
    return value


def split_sampler(sampler: str) -> tuple[str, str | None]:
    """``"DPM++ 2M Karras"`` -> ``("DPM++ 2M", "Karras")``, as A1111 1.6+ writes it."""
    for schedule in ("Karras", "Exponential", "SGM Uniform"):
        if sampler.endswith(" " + schedule):
            return sampler[: -len(schedule) - 1], schedule
    return sampler, None


def a1111_parameters(recipe: Recipe, *, model_hash: str | None = None) -> str:
    """The ``parameters`` text: prompt (with ``<lora:name:w>`` tags), negative, settings line."""
    tags = " ".join(f"<lora:{lora.display_name}:{_weight(lora.weight)}>" for lora in recipe.loras)
    prompt = f"{recipe.prompt} {tags}".strip() if tags else recipe.prompt
    lines = [prompt]
    if recipe.negative_prompt:
        lines.append(f"Negative prompt: {recipe.negative_prompt}")
    sampler, schedule = split_sampler(recipe.sampler)
    pairs: list[tuple[str, str]] = [("Steps", str(recipe.steps)), ("Sampler", sampler)]
    if schedule:
        pairs.append(("Schedule type", schedule))
    pairs += [
        ("CFG scale", _weight(recipe.cfg_scale)),
        ("Seed", str(recipe.seed)),
        ("Size", f"{recipe.width}x{recipe.height}"),
    ]
    if model_hash:
        pairs.append(("Model hash", model_hash))
    pairs.append(("Model", recipe.model_name or recipe.model.rsplit("/", 1)[-1]))
    if recipe.clip_skip > 1:
        pairs.append(("Clip skip", str(recipe.clip_skip)))
    embedded = [(e.name, e.sha256) for e in recipe.embeddings if e.sha256]
    if embedded:
        pairs.append(("TI hashes", ", ".join(f"{name}: {sha[:12]}" for name, sha in embedded)))
    hashed = [(lora.display_name, lora.sha256) for lora in recipe.loras if lora.sha256]
    if hashed:
        pairs.append(("Lora hashes", ", ".join(f"{name}: {sha[:12]}" for name, sha in hashed)))
    pairs.append(("Version", "Atelier"))
    lines.append(", ".join(f"{key}: {_a1111_value(value)}" for key, value in pairs))
    return "\n".join(lines)


def _option(name: str, value: str) -> str:
    # Discord's slash-command parser reads up to the next " name:"; quotes are not needed but
    # newlines would end the command, so they become spaces.
    return f"{name}:{value.replace(chr(10), ' ')}"


def imagine_command(recipe: Recipe) -> str:
    """A ``/imagine`` line that reproduces ``recipe``: three LoRA slots, the rest inline."""
    slots, inline = recipe.loras[:LORA_SLOTS], recipe.loras[LORA_SLOTS:]
    prompt = recipe.prompt
    if inline:
        prompt += " " + " ".join(f"<lora:{lo.display_name}:{_weight(lo.weight)}>" for lo in inline)
    parts = ["/imagine", _option("prompt", prompt), _option("model", recipe.model_name or recipe.model)]
    for index, lora in enumerate(slots, 1):
        parts.append(_option(f"lora{index}", lora.display_name))
        parts.append(_option(f"weight{index}", _weight(lora.weight)))
    if recipe.negative_prompt:
        parts.append(_option("negative", recipe.negative_prompt))
    parts += [
        _option("sampler", recipe.sampler),
        _option("steps", str(recipe.steps)),
        _option("cfg", _weight(recipe.cfg_scale)),
        _option("seed", str(recipe.seed)),
        _option("size", f"{recipe.width}x{recipe.height}"),
    ]
    if recipe.clip_skip > 1:
        parts.append(_option("clip_skip", str(recipe.clip_skip)))
    if recipe.count > 1:
        parts.append(_option("count", str(recipe.count)))
    return " ".join(parts)


def recipe_reply(recipe: Recipe, *, parameters: str | None = None, limit: int = 2000) -> str:
    """The ephemeral Recipe-button answer, both texts in code blocks, within one message.

    ``parameters`` is the text read from the posted PNG when available (it carries the real
    model and LoRA hashes); otherwise it is rebuilt from the recipe.
    """
    command = imagine_command(recipe)
    params = parameters or a1111_parameters(recipe)
    text = f"**Slash command**\n```\n{command}\n```\n**A1111 parameters**\n```\n{params}\n```"
    if len(text) <= limit:
        return text
    # Too long for one message: keep the command whole if possible, cut the parameters.
    head = f"**Slash command**\n```\n{command}\n```\n**A1111 parameters** (cut)\n```\n"
    room = limit - len(head) - 4
    if room < 40:
        return (f"```\n{command[: limit - 9]}…\n```")[:limit]
    return head + params[: room - 1] + "…\n```"
