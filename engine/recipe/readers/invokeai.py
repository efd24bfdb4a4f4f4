"""InvokeAI: the ``invokeai_metadata`` JSON chunk (3.x and 4.x+), and 2.x's ``sd-metadata``.

4.x names models as ``{"name", "hash", "base", "key"}`` with ``hash`` like ``"blake3:…"``
(its default) or ``"sha256:…"``; 3.x as ``{"model_name", "base_model"}``; LoRAs are
``[{"model" | "lora": {...}, "weight": w}]``. InvokeAI's ``clip_skip`` counts layers skipped
(0 = none), A1111's counts from the end (1 = none).

Before any JSON (lstein's stable-diffusion fork, InvokeAI 1.x, and beside ``sd-metadata`` in
2.x) the only record was the ``Dream`` chunk: the command line that makes the image again,
``"a fantasy landscape [blurry]" -s 50 -S 1234567 -W 512 -H 512 -C 7.5 -A k_lms``. Its
writers: ``ldm/dream/pngwriter.py`` (``PromptFormatter.normalize_prompt``: ``"{prompt}"
-s{steps} -W{width} -H{height} -C{cfg} -A{sampler}``, the seed appended as ``-S{seed}``) and
``ldm/invoke/args.py`` (``dream_prompt_str``: ``-s {steps} -S {seed} ...``, the prompt
unquoted from 2.2 on). Negative prompts are the ``[…]`` groups inside the prompt.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from engine.recipe.model import Recipe
from engine.recipe.readers import samplers
from engine.recipe.readers.a1111 import with_tag_loras
from engine.recipe.readers.found import (
    FoundRecipe,
    Resource,
    as_float,
    as_int,
    as_text,
    load_json,
    resource,
)


def _model(kind: str, data: Any, weight: float | None = None) -> Resource | None:
    if not isinstance(data, dict):
        return None
    name = as_text(data.get("name")) or as_text(data.get("model_name"))
    digest = as_text(data.get("hash"))
    sha = digest if digest.lower().startswith("sha256:") else ""
    foreign = digest if digest and not sha else None
    return resource(kind, name, weight, sha, foreign=foreign)  # type: ignore[arg-type]


def _prompt_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # 2.x: [{"prompt": "...", "weight": 1}]
        return " ".join(as_text(p.get("prompt")) for p in value[:50] if isinstance(p, dict))
    return ""


def read_metadata(data: dict[str, Any], source: str) -> FoundRecipe | None:
    if not ("positive_prompt" in data or "model" in data or "generation_mode" in data):
        return None
    notes: list[str] = []
    model = _model("model", data.get("model"))
    loras: list[Resource] = []
    for item in (data.get("loras") or [])[:100] if isinstance(data.get("loras"), list) else []:
        if isinstance(item, dict):
            lora = _model("lora", item.get("model") or item.get("lora"), as_float(item.get("weight")))
            if lora is not None:
                loras.append(lora)
    hashed = [r for r in ([model] if model else []) + loras if r.foreign_hash]
    if hashed:
        notes.append(
            "InvokeAI identified the models by a BLAKE3 hash, which this server does not record; they were matched by name."
        )
    clip_skip = as_int(data.get("clip_skip"))
    values: dict[str, Any] = {
        "seed": as_int(data.get("seed")),
        "steps": as_int(data.get("steps")),
        "cfg_scale": as_float(data.get("cfg_scale")),
        "width": as_int(data.get("width")),
        "height": as_int(data.get("height")),
    }
    if isinstance(data.get("scheduler"), str):
        values["sampler"] = samplers.from_table(samplers.INVOKEAI, data["scheduler"])
    if clip_skip is not None and clip_skip >= 0:
        values["clip_skip"] = clip_skip + 1
    vae = _model("vae", data.get("vae"))
    mode = as_text(data.get("generation_mode"))
    if mode and "txt2img" not in mode:
        notes.append(f"It was made with InvokeAI's {mode} mode; only the prompt and settings carry over.")
    if data.get("controlnets") or data.get("ipAdapters") or data.get("t2iAdapters"):
        notes.append("Not carried over: control adapters (ControlNet, IP-Adapter, T2I-Adapter).")
    missing = tuple(k for k in ("seed", "steps", "cfg_scale", "sampler", "width") if values.get(k) is None)
    recipe = Recipe(
        model="",
        model_name=model.name if model else "",
        prompt=_prompt_text(data.get("positive_prompt")),
        negative_prompt=_prompt_text(data.get("negative_prompt")),
        vae=vae.name if vae else "",
        **{k: v for k, v in values.items() if v is not None},
    )
    resources = ([model] if model else []) + loras + ([vae] if vae and vae.name else [])
    return with_tag_loras(FoundRecipe("InvokeAI", source, recipe, tuple(resources), missing, tuple(notes)))


def _legacy(data: dict[str, Any], source: str) -> FoundRecipe | None:
    """InvokeAI 2.x ``sd-metadata``: ``{"model_weights": ..., "image": {...}}``."""
    image = data.get("image")
    if not isinstance(image, dict):
        return None
    flat = {
        "positive_prompt": _prompt_text(image.get("prompt")),
        "model": {"name": as_text(data.get("model_weights"))},
        "seed": image.get("seed"),
        "steps": image.get("steps"),
        "cfg_scale": image.get("cfg_scale"),
        "width": image.get("width"),
        "height": image.get("height"),
        "scheduler": {"k_euler_a": "euler_a", "k_euler": "euler", "k_heun": "heun", "k_lms": "lms", "ddim": "ddim"}.get(as_text(image.get("sampler")), as_text(image.get("sampler"))),
    }
    return read_metadata(flat, source)


#: Where a quoted prompt ends: the first quote followed by a switch or the end (the writers
#: put the prompt in quotes without escaping the quotes inside it).
_QUOTED = re.compile(r'^\s*"(.*?)"\s*(?=--?[A-Za-z]|$)', re.DOTALL)
#: An unquoted prompt ends before the first switch; InvokeAI's own parser splits the same way
#: (``Args.parse_cmd``: ``^(.+?)\s(--?[a-zA-Z].+)``).
_UNQUOTED = re.compile(r"^(.+?)\s(--?[A-Za-z].*)$", re.DOTALL)
_NEGATIVE = re.compile(r"\[([^\[\]]*)\]")
#: The switches that carry a setting or change what the image is; others are skipped.
_SWITCHES = {
    "-s": "steps", "--steps": "steps", "-S": "seed", "--seed": "seed",
    "-W": "width", "--width": "width", "-H": "height", "--height": "height",
    "-C": "cfg_scale", "--cfg_scale": "cfg_scale",
    "-A": "sampler", "-m": "sampler", "--sampler": "sampler",
    "-I": "init_img", "--init_img": "init_img", "-f": "strength", "--strength": "strength",
    "-V": "variations", "--with_variations": "variations", "-v": "variation_amount",
    "-G": "facetool", "--facetool_strength": "facetool", "-U": "upscale", "--upscale": "upscale",
}  # fmt: skip
_BARE = {"--seamless": "seamless", "--hires_fix": "hires_fix"}
_MAX_DREAM = 20_000


def _switches(text: str) -> dict[str, str]:
    try:
        tokens = shlex.split(text)
    except ValueError:  # an unbalanced quote in a path: plain whitespace splitting is enough
        tokens = text.split()
    values: dict[str, str] = {}
    index = 0
    while index < len(tokens) and index < 400:
        token = tokens[index]
        index += 1
        flag, _, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        if flag in _BARE:
            values[_BARE[flag]] = "1"
        elif flag in _SWITCHES:
            if inline:
                values[_SWITCHES[flag]] = inline
            elif index < len(tokens):
                values[_SWITCHES[flag]] = tokens[index]
                index += 1
        elif len(token) > 2 and token[:2] in _SWITCHES and not token.startswith("--"):
            values[_SWITCHES[token[:2]]] = token[2:]  # the 1.x writer: -s50 -W512 -Ak_lms
    return values


def read_dream(text: str, source: str) -> FoundRecipe | None:
    """The ``Dream`` command line, or None when it does not look like one."""
    text = text[:_MAX_DREAM]
    quoted = _QUOTED.match(text)
    if quoted:
        prompt, rest = quoted.group(1), text[quoted.end() :]
    else:
        split = _UNQUOTED.match(text.strip())
        if split is None:
            return None
        prompt, rest = split.group(1), split.group(2)
    switches = _switches(rest)
    if not ({"steps", "seed", "cfg_scale"} & switches.keys()):
        return None
    negative = ", ".join(n.strip() for n in _NEGATIVE.findall(prompt) if n.strip())
    prompt = re.sub(r"\s{2,}", " ", _NEGATIVE.sub("", prompt)).strip()
    values: dict[str, Any] = {
        "seed": as_int(switches.get("seed")),
        "steps": as_int(switches.get("steps")),
        "cfg_scale": as_float(switches.get("cfg_scale")),
        "width": as_int(switches.get("width")),
        "height": as_int(switches.get("height")),
    }
    sampler = switches.get("sampler", "").strip().lower()
    if sampler:
        values["sampler"] = samplers.INVOKEAI_K.get(sampler) or samplers.from_table(samplers.INVOKEAI, sampler)
    notes = ["InvokeAI's Dream text does not name the model: pick a model of this server for it."]
    if "init_img" in switches:
        notes.append("It was made from an init image (img2img); only the prompt and settings carry over.")
    if "variations" in switches or as_float(switches.get("variation_amount")):
        notes.append("Not carried over: seed variations (-V / -v).")
    if "upscale" in switches or "facetool" in switches:
        notes.append("Not carried over: upscaling and face restoration.")
    if "hires_fix" in switches:
        notes.append("Not carried over: the hires fix (a second, upscaled pass).")
    if "seamless" in switches:
        notes.append("Not carried over: seamless tiling.")
    missing = ("model",) + tuple(k for k in ("seed", "steps", "cfg_scale", "sampler", "width") if values.get(k) is None)
    recipe = Recipe(model="", prompt=prompt, negative_prompt=negative, **{k: v for k, v in values.items() if v is not None})
    return FoundRecipe("InvokeAI", source, recipe, (), missing, tuple(notes))


def read_chunks(texts: dict[str, str]) -> FoundRecipe | None:
    if "invokeai_metadata" in texts:
        data = load_json(texts["invokeai_metadata"])
        if isinstance(data, dict):
            return read_metadata(data, "PNG text chunk 'invokeai_metadata'")
    data = load_json(texts.get("sd-metadata", ""))
    if isinstance(data, dict):
        found = _legacy(data, "PNG text chunk 'sd-metadata'")
        if found is not None:
            return found
    if "Dream" in texts:
        return read_dream(texts["Dream"], "PNG text chunk 'Dream'")
    return None
