"""ComfyUI: the API graph in the PNG's ``prompt`` chunk.

The graph is ``{node_id: {"class_type": ..., "inputs": {...}}}``; an input is a value or a
link ``[node_id, output_index]``. From the sampler (KSampler and kin) we follow ``model``
links up through the LoRA loaders to the checkpoint loader, ``positive``/``negative`` to the
text encoders, ``latent_image`` to the empty latent (the size), and ``clip`` to
CLIPSetLastLayer (clip skip). FLUX graphs (``comfy_extras/nodes_flux.py``) are read the same
way: ``UNETLoader`` (the transformer file) through ``ModelSamplingFlux`` and
``LoraLoaderModelOnly``; the guidance FLUX.1 dev reads is ``FluxGuidance``'s (or
``CLIPTextEncodeFlux``'s) ``guidance``, which becomes the recipe's ``cfg_scale`` (the
sampler's own ``cfg`` stays 1 there); and ``SamplerCustomAdvanced`` takes its seed, steps,
sampler and conditioning through ``RandomNoise``, ``BasicScheduler``, ``KSamplerSelect`` and
``BasicGuider``/``CFGGuider``. Every walk keeps a visited set and a depth cap, so cyclic or
absurdly deep graphs end; nodes past :data:`MAX_NODES` are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from engine.recipe.model import EmbeddingRef, Recipe
from engine.recipe.readers import samplers
from engine.recipe.readers.a1111 import with_tag_loras
from engine.recipe.readers.found import FoundRecipe, Resource, as_float, as_int, as_text, resource

MAX_NODES = 5_000
MAX_DEPTH = 200
SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")
CHECKPOINT_LOADERS = ("CheckpointLoaderSimple", "CheckpointLoader", "UNETLoader", "unCLIPCheckpointLoader", "ImageOnlyCheckpointLoader")
LORA_LOADERS = ("LoraLoader", "LoraLoaderModelOnly")
TEXT_ENCODERS = ("CLIPTextEncode", "CLIPTextEncodeSDXL", "CLIPTextEncodeSDXLRefiner", "CLIPTextEncodeFlux")
#: Nodes that set a fixed flow-matching shift (``comfy_extras/nodes_model_advanced.py``): its
#: ``shift`` input. ComfyUI's Qwen-Image and Z-Image templates go through ModelSamplingAuraFlow.
SHIFT_NODES = ("ModelSamplingAuraFlow", "ModelSamplingSD3")
#: Nodes only a FLUX graph has (ComfyUI's comfy_extras/nodes_flux.py, nodes_model_advanced.py).
FLUX_NODES = ("FluxGuidance", "CLIPTextEncodeFlux", "ModelSamplingFlux", "FluxDisableGuidance")
#: Where a distilled guidance value sits, by node.
_GUIDANCE_NODES = ("FluxGuidance", "CLIPTextEncodeFlux")
#: Nodes that change the image in ways a recipe cannot hold, in people's words.
_UNSUPPORTED = {
    "ControlNet": "ControlNet",
    "IPAdapter": "IP-Adapter",
    "Upscale": "upscaling",
    "VAEEncode": "a source image (img2img)",
    "LoadImage": "a source image",
    "FaceDetailer": "face detailing",
    "Hypernetwork": "a hypernetwork",
}
_EMBEDDING = re.compile(r"embedding:([^\s,()\[\]{}<>:]+)(?:\.(?:safetensors|pt|bin))?", re.IGNORECASE)


class _Graph:
    def __init__(self, graph: dict[str, Any]) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        for key, node in list(graph.items())[:MAX_NODES]:
            if isinstance(node, dict) and isinstance(node.get("class_type"), str):
                inputs = node.get("inputs")
                self.nodes[str(key)] = {"class_type": node["class_type"], "inputs": inputs if isinstance(inputs, dict) else {}}

    def linked(self, value: Any) -> dict[str, Any] | None:
        if isinstance(value, list) and value and isinstance(value[0], (str, int)) and not isinstance(value[0], bool):
            return self.nodes.get(str(value[0]))
        return None

    def upstream(self, start: Any, via: tuple[str, ...]) -> Iterator[dict[str, Any]]:
        """Nodes reached from the link ``start`` by following the inputs named ``via``."""
        seen: set[int] = set()
        node = self.linked(start)
        depth = 0
        while node is not None and id(node) not in seen and depth < MAX_DEPTH:
            seen.add(id(node))
            depth += 1
            yield node
            following = None
            for name in via:
                following = self.linked(node["inputs"].get(name))
                if following is not None:
                    break
            node = following

    def text(self, value: Any, depth: int = 0) -> str:
        """A string input, following links to primitive/string nodes."""
        if isinstance(value, str):
            return value
        node = self.linked(value)
        if node is None or depth > 20:
            return ""
        for key in ("text", "string", "value", "prompt", "text_g", "Text"):
            if key in node["inputs"]:
                return self.text(node["inputs"][key], depth + 1)
        return ""

    def conditioning_text(self, start: Any) -> tuple[str, Any]:
        """(text, the encoder's clip link) of the first text encoder above ``start``."""
        seen: set[int] = set()
        stack = [self.linked(start)]
        while stack and len(seen) < MAX_DEPTH:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if node["class_type"] == "ConditioningZeroOut":  # a zeroed conditioning: no text (Z-Image's negative)
                return "", None
            if node["class_type"] in TEXT_ENCODERS or "text" in node["inputs"]:
                inputs = node["inputs"]
                # CLIPTextEncodeFlux: T5 reads the prompt proper; CLIP-L only gives the pooled vector.
                text = (self.text(inputs.get("text")) or self.text(inputs.get("text_g"))
                        or self.text(inputs.get("t5xxl")) or self.text(inputs.get("clip_l")))  # fmt: skip
                if text or node["class_type"] in TEXT_ENCODERS:
                    return text, inputs.get("clip")
            for name in ("conditioning", "conditioning_1", "conditioning_to", "positive", "negative", "conditioning_2"):
                stack.append(self.linked(node["inputs"].get(name)))
        return "", None


    def guidance(self, start: Any) -> float | None:
        """The distilled guidance set on the conditioning above ``start`` (FluxGuidance or
        CLIPTextEncodeFlux), or None."""
        seen: set[int] = set()
        stack = [self.linked(start)]
        while stack and len(seen) < MAX_DEPTH:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if node["class_type"] in _GUIDANCE_NODES:
                return as_float(node["inputs"].get("guidance"))
            for name in ("conditioning", "conditioning_1", "conditioning_to", "positive"):
                stack.append(self.linked(node["inputs"].get(name)))
        return None


def _custom_inputs(graph: _Graph, inputs: dict[str, Any]) -> dict[str, Any]:
    """SamplerCustom(Advanced)'s settings gathered from the nodes it links to, under
    KSampler's input names: ``noise`` (RandomNoise), ``guider`` (BasicGuider, CFGGuider),
    ``sampler`` (KSamplerSelect), ``sigmas`` (BasicScheduler and kin)."""
    found = dict(inputs)
    noise = graph.linked(inputs.get("noise"))
    if noise is not None and "noise_seed" in noise["inputs"]:
        found["noise_seed"] = noise["inputs"]["noise_seed"]
    guider = graph.linked(inputs.get("guider"))
    if guider is not None:
        for name in ("model", "positive", "negative", "cfg"):
            if name in guider["inputs"]:
                found[name] = guider["inputs"][name]
        if "conditioning" in guider["inputs"]:  # BasicGuider: one conditioning, no CFG
            found["positive"] = guider["inputs"]["conditioning"]
    chosen = graph.linked(inputs.get("sampler"))
    if chosen is not None and "sampler_name" in chosen["inputs"]:
        found["sampler_name"] = chosen["inputs"]["sampler_name"]
    sigmas = graph.linked(inputs.get("sigmas"))
    if sigmas is not None:
        for name in ("steps", "scheduler", "denoise"):
            if name in sigmas["inputs"]:
                found[name] = sigmas["inputs"][name]
        if "model" not in found and "model" in sigmas["inputs"]:
            found["model"] = sigmas["inputs"]["model"]
    return found


def _sampler_node(graph: _Graph) -> dict[str, Any] | None:
    candidates = [n for n in graph.nodes.values() if n["class_type"] in SAMPLERS]
    if not candidates:
        return None
    # With a hires pass there are two samplers; the first pass starts from an empty latent.
    for node in candidates:
        latent = graph.linked(node["inputs"].get("latent_image"))
        if latent is not None and latent["class_type"].startswith("Empty"):
            return node
    return candidates[0]


def read(data: dict[str, Any], source: str) -> FoundRecipe | None:
    graph = _Graph(data)
    sampler = _sampler_node(graph)
    if sampler is None:
        return None
    inputs = _custom_inputs(graph, sampler["inputs"]) if sampler["class_type"].startswith("SamplerCustom") else sampler["inputs"]
    notes: list[str] = []
    flux = any(
        n["class_type"] in FLUX_NODES or (n["class_type"] == "DualCLIPLoader" and n["inputs"].get("type") == "flux")
        for n in graph.nodes.values()
    )
    dit = None if flux else dit_graph(graph)  # Z-Image, Qwen-Image, FLUX.2 Klein (issue 19)
    zimage = dit is not None
    model: Resource | None = None
    loras: list[Resource] = []
    shift: float | None = None
    for node in graph.upstream(inputs.get("model"), ("model",)):
        kind, node_inputs = node["class_type"], node["inputs"]
        if kind in SHIFT_NODES and shift is None:
            # A fixed flow-matching shift (the recipe's ``shift``); ModelSamplingFlux's is
            # FLUX.1 dev's own resolution-dependent one, which a recipe leaves at None.
            shift = as_float(node_inputs.get("shift"))
            shift = shift if shift is not None and shift > 0 else None
        elif kind in LORA_LOADERS:
            weight = as_float(node_inputs.get("strength_model"))
            clip_weight = as_float(node_inputs.get("strength_clip"))
            if clip_weight is not None and weight is not None and clip_weight != weight:
                notes.append(f"LoRA `{as_text(node_inputs.get('lora_name'))[:80]}` had a separate text-encoder weight {clip_weight:g}; one weight ({weight:g}) is used here.")
            loras.append(resource("lora", node_inputs.get("lora_name"), weight if weight is not None else 1.0))
        elif kind in CHECKPOINT_LOADERS:
            model = resource("model", node_inputs.get("ckpt_name") or node_inputs.get("unet_name"))
            break
    loras.reverse()  # listed from the checkpoint down, as people read a graph
    positive, clip_link = graph.conditioning_text(inputs.get("positive"))
    negative, _ = graph.conditioning_text(inputs.get("negative"))
    clip_skip = 1
    for node in graph.upstream(clip_link, ("clip",)):
        if node["class_type"] == "CLIPSetLastLayer":
            layer = as_int(node["inputs"].get("stop_at_clip_layer"))
            if layer is not None and layer < 0:
                clip_skip = -layer
            break
    values: dict[str, Any] = {
        "shift": shift,
        "seed": as_int(inputs.get("seed", inputs.get("noise_seed"))),
        "steps": as_int(inputs.get("steps")),
        "cfg_scale": as_float(inputs.get("cfg")),
    }
    if flux:
        values["architecture"] = "flux"
        guidance = graph.guidance(inputs.get("positive"))
        if guidance is not None:
            # The guidance FLUX.1 dev reads; the sampler's CFG beside it stays 1 (one row).
            if values["cfg_scale"] not in (None, 1.0):
                notes.append(f"It also used CFG {values['cfg_scale']:g} beside FLUX's distilled guidance; only the guidance ({guidance:g}) carries over.")
            values["cfg_scale"] = guidance
        elif values["cfg_scale"] is None:
            values["cfg_scale"] = 1.0  # BasicGuider without FluxGuidance: no guidance (schnell)
    sampler_name = inputs.get("sampler_name")
    if isinstance(sampler_name, str):
        values["sampler"] = samplers.from_comfy(sampler_name, as_text(inputs.get("scheduler")))
    if dit is not None:
        values["architecture"], values["variant"] = dit[0], dit[1] or ""
        if values.get("sampler") not in (None, "Euler"):
            # ComfyUI's Z-Image template samples with res_multistep; these DiTs run flow-matching
            # Euler here (their diffusers pipelines'), at their shift.
            notes.append(f"It used the sampler {values['sampler']}; {dit[2]} runs flow-matching Euler here.")
            values["sampler"] = "Euler"
    latent = graph.linked(inputs.get("latent_image"))
    if latent is not None and "width" in latent["inputs"]:
        values["width"], values["height"] = as_int(latent["inputs"].get("width")), as_int(latent["inputs"].get("height"))
    denoise = as_float(inputs.get("denoise"))
    if denoise is not None and denoise < 1.0:
        notes.append(f"It was made from another image (denoise {denoise:g}); only the prompt and settings carry over.")
    vae = None
    for node in graph.nodes.values():
        if node["class_type"] == "DualCLIPLoader" and flux:
            names = [as_text(node["inputs"].get(k))[:120] for k in ("clip_name1", "clip_name2")]
            notes.append(f"Its FLUX text encoders ({', '.join(n for n in names if n)}) and VAE are the model's own here, as its operator set them up.")
        if node["class_type"] == "CLIPLoader" and zimage:
            notes.append(f"Its text encoder ({as_text(node['inputs'].get('clip_name'))[:120]}) and VAE are the model's own here, as its operator set them up.")
        if node["class_type"] == "VAELoader" and not flux and not zimage:
            vae = resource("vae", node["inputs"].get("vae_name"))
            break
    for class_type in sorted({n["class_type"] for n in graph.nodes.values()}):
        for marker, words in _UNSUPPORTED.items():
            if marker in class_type:
                notes.append(f"Not carried over: {words} ({class_type}).")
                break
    embeddings: list[str] = []

    def lift(text: str) -> str:
        def name(match: re.Match[str]) -> str:
            if match[1] not in embeddings:
                embeddings.append(match[1])
            return match[1]

        return _EMBEDDING.sub(name, text)

    positive, negative = lift(positive), lift(negative)
    missing = tuple(k for k in ("seed", "steps", "cfg_scale", "sampler", "width") if values.get(k) is None)
    if model is None:
        missing += ("model",)
    recipe = Recipe(
        model="",
        model_name=model.name if model else "",
        prompt=positive,
        negative_prompt=negative,
        clip_skip=clip_skip,
        vae=vae.name if vae else "",
        embeddings=tuple(EmbeddingRef("", e) for e in embeddings),
        **{k: v for k, v in values.items() if v is not None},
    )
    resources = ([model] if model else []) + loras + [resource("embedding", e) for e in embeddings] + ([vae] if vae else [])
    return with_tag_loras(FoundRecipe("ComfyUI", source, recipe, tuple(resources), missing, tuple(notes)))


#: What ComfyUI's graphs for the issue-19 DiTs load: the text encoder through a ``CLIPLoader``
#: of a type naming the family (Z-Image's Qwen3 as ``lumina2``, whose own Lumina 2 reads Gemma;
#: ``qwen_image``; ``flux2``), or a transformer file so named.
_DIT_NAMES = (
    ("zimage", "Z-Image", ("z_image", "z-image", "zimage")),
    ("qwen_image", "Qwen-Image", ("qwen_image", "qwen-image", "qwenimage")),
    ("flux2", "FLUX.2", ("flux-2", "flux2", "flux_2")),
)
_CLIP_TYPES = {"qwen_image": "qwen_image", "flux2": "flux2"}


def dit_graph(graph: _Graph) -> tuple[str, str | None, str] | None:
    """(architecture, variant, label) of a Z-Image, Qwen-Image or FLUX.2 graph, or None."""
    names = " ".join(as_text(n["inputs"].get("unet_name") or n["inputs"].get("ckpt_name")).lower()
                     for n in graph.nodes.values() if n["class_type"] in CHECKPOINT_LOADERS)  # fmt: skip
    found = None
    for node in graph.nodes.values():
        inputs = node["inputs"]
        if node["class_type"] == "CLIPLoader":
            kind, clip = inputs.get("type"), as_text(inputs.get("clip_name")).lower()
            if kind == "lumina2" and "qwen" in clip:
                found = "zimage"
            elif kind in _CLIP_TYPES:
                found = _CLIP_TYPES[kind]
    if found is None:
        found = next((arch for arch, _, needles in _DIT_NAMES if any(n in names for n in needles)), None)
    if found is None:
        return None
    label = next(label for arch, label, _ in _DIT_NAMES if arch == found)
    if found == "zimage":
        variant: str | None = "base" if "base" in names and "turbo" not in names else "turbo"
    elif found == "qwen_image":
        # Qwen-Image-Edit-2509 and -2511 run QwenImageEditPlusPipeline (up to three pictures).
        variant = ("edit_plus" if "2509" in names or "2511" in names else "edit") if "edit" in names else None
    else:
        size = "9b" if "9b" in names else "4b" if "4b" in names else None
        variant = f"klein-{size}{'-base' if 'base' in names else ''}" if size and "klein" in names else None
    return found, variant, label
