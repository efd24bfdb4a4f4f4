"""A recipe as text people can copy: a ``/imagine`` line, its share code and A1111 text.

The ``/imagine`` line reproduces the image in Discord; the share code is the same recipe in
one paste (``/imagine recipe:<code>``); the parameters text, written by the one writer the
engine's PNGs use (:func:`engine.recipe.a1111.write_parameters`), is what A1111, Civitai and
most image viewers read. Plain string work, no torch.
"""

from __future__ import annotations

import re

from engine.protocol import Recipe
from engine.recipe import share_code
from engine.recipe.a1111 import lora_tags, number, write_parameters

#: A quoted absolute path (POSIX or Windows) in an engine message.
_ABSOLUTE_PATH = re.compile(r"'(?:/|[A-Za-z]:[\\/])[^']*'")

#: How many LoRAs ``/imagine`` takes as options; the rest go inline in the prompt.
LORA_SLOTS = 3
CONTENT_LIMIT = 2000
#: Recipe names as the registry takes them: 64 characters, none of ``:<>``.
NAME_LIMIT = 64


def _option(name: str, value: str) -> str:
    # Discord's slash-command parser reads up to the next " name:"; quotes are not needed but
    # newlines would end the command, so they become spaces.
    return f"{name}:{value.replace(chr(10), ' ')}"


def imagine_command(recipe: Recipe) -> str:
    """A ``/imagine`` line that reproduces ``recipe``: three LoRA slots, the rest inline."""
    slots, inline = recipe.loras[:LORA_SLOTS], recipe.loras[LORA_SLOTS:]
    prompt = recipe.prompt
    if inline:
        prompt += " " + lora_tags(inline)
    parts = ["/imagine", _option("prompt", prompt), _option("model", recipe.model_label)]
    for index, lora in enumerate(slots, 1):
        parts.append(_option(f"lora{index}", lora.display_name))
        parts.append(_option(f"weight{index}", number(lora.weight)))
    if recipe.negative_prompt:
        parts.append(_option("negative", recipe.negative_prompt))
    parts += [
        _option("sampler", recipe.sampler),
        _option("steps", str(recipe.steps)),
        _option("cfg", number(recipe.cfg_scale)),
        _option("seed", str(recipe.seed)),
        _option("size", f"{recipe.width}x{recipe.height}"),
    ]
    if recipe.clip_skip > 1:
        parts.append(_option("clip_skip", str(recipe.clip_skip)))
    if recipe.count > 1:
        parts.append(_option("count", str(recipe.count)))
    return " ".join(parts)


def recipe_reply(recipe: Recipe) -> tuple[str, str | None]:
    """The Recipe button's answer: (message text, text file or None).

    Everything fits one message for most recipes. A long one (a 4000-character prompt) is
    never cut: the message says so and the whole recipe comes as ``recipe.txt``.
    """
    command = imagine_command(recipe)
    code = share_code.encode(recipe)
    params = write_parameters(recipe)
    text = (
        f"**Slash command**\n```\n{command}\n```\n**Recipe code**\n```\n/imagine recipe:{code}\n```\n"
        f"**A1111 parameters**\n```\n{params}\n```"
    )
    if len(text) <= CONTENT_LIMIT:
        return text, None
    whole = f"Slash command:\n{command}\n\nRecipe code:\n/imagine recipe:{code}\n\nA1111 parameters:\n{params}\n"
    short = "This recipe is too long for one message, so here it is whole as a file."
    if len(code) + 80 < CONTENT_LIMIT - len(short):
        short += f"\n**Recipe code**\n```\n/imagine recipe:{code}\n```"
    return short, whole


def suggest_name(recipe: Recipe) -> str:
    """A name the registry accepts, from the prompt's first words and the seed.

    (The Save button used to save ``"<first 60 characters> #<seed>"``, which any prompt with
    ``(word:1.2)`` or a 10-digit seed made invalid.)
    """
    words = re.sub(r"[:<>()\[\]{}]", " ", recipe.prompt)
    words = re.sub(r"\s+", " ", words).strip(" ,") or "recipe"
    suffix = f" #{recipe.seed}"
    room = NAME_LIMIT - len(suffix)
    if len(words) > room:
        words = words[:room].rsplit(" ", 1)[0].rstrip(" ,") or words[:room]
    return f"{words}{suffix}"


def public_error(message: str, recipe: Recipe) -> str:
    """An engine error as members may read it: files by registered name, no folder paths.

    The engine names files by their path relative to its folders, and its folders by their
    absolute path; both belong to the operator's disk, not to a channel.
    """
    names = {recipe.model: recipe.model_name or "the model"}
    names.update({lora.file: lora.display_name for lora in recipe.loras})
    names.update({e.file: e.name for e in recipe.embeddings})
    if recipe.vae:
        names[recipe.vae] = "the VAE"
    for path, name in sorted(names.items(), key=lambda item: -len(item[0])):
        if path:
            message = message.replace(path, name)
    return _ABSOLUTE_PATH.sub("the engine's folder", message)
