"""Test images in each tool's documented metadata layout (key names checked against the
tools' sources: A1111 images.py/stealth extension, ComfyUI's API graph, InvokeAI's
core_metadata, NovelAI's Comment chunk, SwarmUI's "Image Metadata Format" doc, Fooocus's
meta_parser, Civitai's generator text)."""

from __future__ import annotations

import gzip
import io
import json

from PIL import Image, PngImagePlugin


def png(texts: dict[str, str] | None = None, *, image: Image.Image | None = None, mode: str = "RGB") -> bytes:
    picture = image or Image.new(mode, (8, 8), (40, 90, 160) if mode == "RGB" else (40, 90, 160, 255))
    info = PngImagePlugin.PngInfo()
    for key, value in (texts or {}).items():
        info.add_text(key, value)
    out = io.BytesIO()
    picture.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def user_comment_unicode(text: str) -> bytes:
    """piexif.helper.UserComment.dump(text, encoding="unicode"), as A1111 writes JPEGs."""
    return b"UNICODE\0" + text.encode("utf-16-be")


def jpeg_or_webp(text: str, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = user_comment_unicode(text)
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out, format=fmt, exif=exif.tobytes())
    return out.getvalue()


def stealth_png(text: str, *, compressed: bool = True, mode: str = "alpha", size: tuple[int, int] = (64, 64)) -> bytes:
    """The stealth_pnginfo layout: column-major LSBs, signature, 32-bit bit length, payload."""
    payload = gzip.compress(text.encode()) if compressed else text.encode()
    signature = {("alpha", True): b"stealth_pngcomp", ("alpha", False): b"stealth_pnginfo",
                 ("rgb", True): b"stealth_rgbcomp", ("rgb", False): b"stealth_rgbinfo"}[(mode, compressed)]  # fmt: skip
    bits = "".join(f"{b:08b}" for b in signature) + f"{len(payload) * 8:032b}" + "".join(f"{b:08b}" for b in payload)
    width, height = size
    image = Image.new("RGBA", size, (100, 150, 200, 255))
    pixels = image.load()
    index = 0
    for x in range(width):
        for y in range(height):
            r, g, b, a = 100, 150, 200, 255
            if mode == "alpha":
                if index < len(bits):
                    a = 254 | int(bits[index])
                    index += 1
            else:
                values = []
                for base in (r, g, b):
                    if index < len(bits):
                        values.append((base & 0xFE) | int(bits[index]))
                        index += 1
                    else:
                        values.append(base)
                r, g, b = values
            pixels[x, y] = (r, g, b, a)
    assert index >= len(bits), "image too small for the payload"
    return png(image=image)


COMFY_GRAPH = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "SDXL\\tiny-sd15.safetensors"}},
    "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "styles/watercolor.safetensors", "strength_model": 0.6,
                                                   "strength_clip": 0.6, "model": ["4", 0], "clip": ["4", 1]}},
    "11": {"class_type": "LoraLoader", "inputs": {"lora_name": "pixel-art.safetensors", "strength_model": -0.4,
                                                   "strength_clip": 1.0, "model": ["10", 0], "clip": ["10", 1]}},
    "12": {"class_type": "CLIPSetLastLayer", "inputs": {"stop_at_clip_layer": -2, "clip": ["11", 1]}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox in snow, embedding:goodhands", "clip": ["12", 0]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["12", 0]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 2, "cfg": 6.5, "sampler_name": "dpmpp_2m",
                                                "scheduler": "karras", "denoise": 1.0, "model": ["11", 0],
                                                "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}  # fmt: skip


def comfy_png(graph: dict | None = None) -> bytes:
    return png({"prompt": json.dumps(graph or COMFY_GRAPH), "workflow": json.dumps({"nodes": [], "links": []})})


INVOKEAI = {
    "generation_mode": "txt2img", "positive_prompt": "a castle on a hill", "negative_prompt": "lowres",
    "width": 832, "height": 1216, "seed": 99, "rand_device": "cpu", "cfg_scale": 5.5, "steps": 30,
    "scheduler": "dpmpp_2m_k", "clip_skip": 1,
    "model": {"key": "a1b2", "hash": "blake3:" + "ab" * 32, "name": "tiny-sdxl", "base": "sdxl", "type": "main"},
    "loras": [{"model": {"key": "c3", "hash": "sha256:" + "cd" * 32, "name": "watercolor-xl", "base": "sdxl", "type": "lora"}, "weight": 0.75}],
    "app_version": "5.6.0",
}  # fmt: skip

NOVELAI_COMMENT = {
    "prompt": "1girl, {masterpiece}, silver hair", "steps": 28, "height": 1216, "width": 832, "scale": 5.0,
    "uncond_scale": 1.0, "cfg_rescale": 0.0, "seed": 1234567, "n_samples": 1, "noise_schedule": "karras",
    "sampler": "k_euler_ancestral", "uc": "lowres, bad anatomy",
}  # fmt: skip

SWARM = {
    "sui_image_params": {
        "prompt": "a photo of a cat", "negativeprompt": "blurry", "model": "OfficialStableDiffusion/tiny-sdxl",
        "seed": 1, "steps": "20", "cfgscale": 7.0, "aspectratio": "1:1", "width": 1024, "height": 1024,
        "sampler": "euler_ancestral", "scheduler": "normal", "loras": "watercolor-xl,pixel-art-xl",
        "loraweights": "0.8,0.5", "clipstopatlayer": -2, "swarm_version": "0.9.3.1",
    },
    "sui_extra_data": {"date": "2025-01-25", "prep_time": "6.11 sec", "generation_time": "4.84 sec"},
    "sui_models": [
        {"name": "OfficialStableDiffusion/tiny-sdxl.safetensors", "param": "model", "hash": "0x" + "ef" * 32},
    ],
}  # fmt: skip

FOOOCUS = {
    "adm_guidance": "(1.5, 0.8, 0.3)", "base_model": "tiny-sdxl", "base_model_hash": "0123456789",
    "clip_skip": 2, "full_negative_prompt": ["blurry", "lowres"], "full_prompt": ["a dragon, cinematic", "dramatic light"],
    "guidance_scale": 4.0, "loras": [["watercolor-xl", 0.5, "9876543210"]], "metadata_scheme": "fooocus",
    "negative_prompt": "blurry", "performance": "Speed", "prompt": "a dragon", "refiner_model": "None",
    "resolution": "(1024, 1024)", "sampler": "dpmpp_2m_sde_gpu", "scheduler": "karras", "seed": "12345",
    "sharpness": 2.0, "steps": 30, "styles": "['Fooocus V2', 'Fooocus Enhance']", "vae": "Default (model)",
    "version": "Fooocus v2.5.5",
}  # fmt: skip

CIVITAI_TEXT = (
    "a knight, detailed armor\nNegative prompt: bad hands\n"
    'Steps: 25, CFG scale: 6, Sampler: DPM++ 2M Karras, Seed: 77, Size: 832x1216, Clip skip: 2, '
    'Created Date: 2025-01-01T0000:00.0000000Z, Civitai resources: [{"type":"checkpoint","modelVersionId":290640,'
    '"modelName":"Tiny SDXL","modelVersionName":"v1"},{"type":"lora","weight":0.45,"modelVersionId":135931,'
    '"modelName":"Watercolor XL","modelVersionName":"v2"}], Civitai metadata: {}'
)

#: NovelAI's first image generator (2022), chunk for chunk as it saved a PNG: the prompt only
#: in ``Description``, no prompt or size in ``Comment`` (the layout AUTOMATIC1111's
#: ``read_info_from_image`` reads; values as in the sample of novelai-png-metadata-cli).
NOVELAI_V1 = {
    "Title": "AI generated image",
    "Description": "masterpiece, best quality, cat, space, icon",
    "Software": "NovelAI",
    "Source": "Stable Diffusion 1D44365E",
    "Comment": json.dumps({"steps": 50, "sampler": "k_euler_ancestral", "seed": 2253955223, "strength": 0.4,
                           "noise": 0, "scale": 10, "uc": "lowres, bad anatomy, bad hands"}),
}  # fmt: skip

#: InvokeAI's ``Dream`` chunk, as each of its writers formatted it: lstein's fork / 1.x
#: (``ldm/dream/pngwriter.py`` normalize_prompt, the seed appended by dream.py), 2.0-2.1
#: (``ldm/invoke/args.py`` dream_prompt_str, quoted prompt) and 2.2+ (unquoted prompt).
DREAM_1X = '"a fantasy landscape, castle [blurry, lowres]" -s50 -W512 -H768 -C7.5 -Ak_lms -S1234567'
DREAM_20 = '"there\'s a fly in my soup [text]" -s 30 -S 42 -W 640 -H 512 -C 9.0 -A k_euler_a -I init.png -f 0.6'
DREAM_22 = "an astronaut riding a horse [cartoon] [ugly] -s 25 -S 7 -W 512 -H 512 -C 6.5 -A k_dpmpp_2 -U 2 0.75"


def invokeai_dream_png(dream: str, *, size: tuple[int, int] = (8, 8)) -> bytes:
    """A PNG with only the ``Dream`` chunk (``PngWriter.save_image_and_prompt_to_png``)."""
    return png({"Dream": dream}, image=Image.new("RGB", size, (12, 34, 56)))
