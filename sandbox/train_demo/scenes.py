"""The procedural picture set the demo model learns from: seeded scenes with their captions.

A model trained from scratch on a CPU-sized budget can only learn a small world, so the world is
small and regular on purpose: a sky whose colours say the time of day (dawn, noon, dusk,
night), the sea or a field, and up to three objects (a lighthouse, a house, a tree), the sun
or the moon. Every scene comes with the caption that names what is drawn, so the prompt
decides the picture. The styles and the character the demo LoRAs learn are made from the same
scenes: ``pixel art`` (the scene as 8x8 cells from a 16-colour palette), ``sepia`` (the scene's
luminance in warm browns) and ``captain nova`` (a large figure standing in the scene).

Numpy and Pillow only (no torch), so the measures in :mod:`sandbox.train_demo.measures` and
the tests can use it too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 256
TIMES = ("dawn", "noon", "dusk", "night")
SETTINGS = ("by the sea", "in a field")
OBJECTS = ("lighthouse", "house", "tree")
STYLES = ("base", "pixel", "sepia", "nova")
#: Words a caption uses for each time of day (the first is the one the demo's prompts use).
TIME_WORDS = {
    "dawn": ("at dawn", "at sunrise"),
    "noon": ("at noon", "in the day"),
    "dusk": ("at dusk", "at sunset"),
    "night": ("at night",),
}
#: The trigger words of the styles and the character (what a member writes in the prompt).
TRIGGERS = {"pixel": "pixel art", "sepia": "sepia photo", "nova": "captain nova"}

# Sky top, sky at the horizon, light on the ground (a multiplier), the sun or moon's colour.
_SKY = {
    "dawn": ((120, 130, 200), (250, 190, 160), 0.8, (255, 235, 180)),
    "noon": ((50, 120, 230), (170, 210, 250), 1.0, (255, 250, 215)),
    "dusk": ((60, 40, 110), (250, 120, 40), 0.6, (255, 110, 30)),
    "night": ((4, 6, 22), (18, 26, 58), 0.28, (235, 235, 215)),
}
_WARM_LIGHT = (255, 220, 90)  # lit windows and the lighthouse lamp
#: Captain Nova's suit: a purple no scene uses, so the figure measure can find it.
NOVA_SUIT = (150, 55, 215)
NOVA_SCARF = (225, 30, 45)
#: PICO-8's 16 colours: the pixel-art palette.
PIXEL_PALETTE = np.array(
    [
        (0, 0, 0), (29, 43, 83), (126, 37, 83), (0, 135, 81), (171, 82, 54), (95, 87, 79),
        (194, 195, 199), (255, 241, 232), (255, 0, 77), (255, 163, 0), (255, 236, 39),
        (0, 228, 54), (41, 173, 255), (131, 118, 156), (255, 119, 168), (255, 204, 170),
    ],
    dtype=np.float32,
)  # fmt: skip
PIXEL_CELL = 8
SEPIA_MATRIX = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], dtype=np.float32)


@dataclass(frozen=True)
class Scene:
    """What one picture shows; :func:`render` draws it, :func:`caption` names it."""

    time: str
    setting: str
    objects: tuple[str, ...]  # in caption order
    slots: tuple[float, ...]  # each object's centre, as a fraction of the width
    scales: tuple[float, ...]
    horizon: float  # as a fraction of the height
    body_light: float  # the sun/moon's x, as a fraction of the width
    style: str = "base"
    nova_x: float = 0.5
    variant: int = 0  # small choices (house colour, tree shape), drawn from the seed


def random_scene(rng: np.random.Generator, style: str = "base") -> Scene:
    """A random scene; ``style`` "nova" always has the figure and at most two objects."""
    time = TIMES[int(rng.integers(len(TIMES)))]
    setting = SETTINGS[int(rng.integers(len(SETTINGS)))]
    most = 2 if style == "nova" else 3
    count = int(rng.integers(1, most + 1))
    objects = tuple(str(o) for o in rng.permutation(OBJECTS)[:count])
    # Three slots across the picture, jittered, so objects rarely overlap.
    slot_order = rng.permutation(3)[:count]
    slots = tuple(float((s + 0.5) / 3 + rng.uniform(-0.06, 0.06)) for s in slot_order)
    scales = tuple(float(rng.uniform(0.85, 1.15)) for _ in objects)
    nova_x = float(rng.uniform(0.35, 0.65))
    return Scene(
        time=time, setting=setting, objects=objects, slots=slots, scales=scales,
        horizon=float(rng.uniform(0.55, 0.66)), body_light=float(rng.uniform(0.15, 0.85)), style=style,
        nova_x=nova_x, variant=int(rng.integers(1 << 16)),
    )  # fmt: skip


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def caption(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """The prompt that names the scene, e.g. ``a lighthouse and a tree by the sea at dusk``."""
    words = TIME_WORDS[scene.time]
    when = words[int(rng.integers(len(words)))] if rng is not None else words[0]
    things = _join([f"a {o}" for o in scene.objects])
    text = f"{things} {scene.setting} {when}"
    if scene.style in TRIGGERS:
        text = f"{TRIGGERS[scene.style]}, {text}"
    return text


def _shade(colour: tuple[int, int, int], light: float) -> tuple[int, int, int]:
    return tuple(int(min(255, c * light)) for c in colour)  # type: ignore[return-value]


def _sky(scene: Scene, size: int) -> np.ndarray:
    top, bottom, _, _ = _SKY[scene.time]
    horizon = int(scene.horizon * size)
    t = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None]
    rows = np.array(top, np.float32)[None] * (1 - t) + np.array(bottom, np.float32)[None] * t
    image = np.zeros((size, size, 3), np.float32)
    image[:horizon] = rows[:, None, :]
    return image


def _draw_lighthouse(draw: ImageDraw.ImageDraw, cx: float, base: float, s: float, scene: Scene, size: int) -> None:
    light = _SKY[scene.time][2]
    u = size / 256 * s
    height, bottom_w, top_w = 118 * u, 30 * u, 20 * u
    top = base - height
    stripes = 4
    for i in range(stripes):
        y0 = base - height * (i + 1) / stripes
        y1 = base - height * i / stripes
        w0 = top_w + (bottom_w - top_w) * (1 - (i + 1) / stripes)
        w1 = top_w + (bottom_w - top_w) * (1 - i / stripes)
        colour = (200, 35, 40) if i % 2 == 0 else (245, 245, 240)
        draw.polygon([(cx - w1 / 2, y1), (cx + w1 / 2, y1), (cx + w0 / 2, y0), (cx - w0 / 2, y0)],
                     fill=_shade(colour, light))  # fmt: skip
    # Gallery, lamp room and roof.
    draw.rectangle([cx - top_w * 0.75, top - 4 * u, cx + top_w * 0.75, top], fill=_shade((40, 40, 45), light))
    lamp = _WARM_LIGHT if scene.time in ("night", "dusk") else _shade((200, 230, 240), light)
    draw.rectangle([cx - top_w * 0.45, top - 18 * u, cx + top_w * 0.45, top - 4 * u], fill=lamp)
    draw.polygon([(cx - top_w * 0.6, top - 18 * u), (cx + top_w * 0.6, top - 18 * u), (cx, top - 32 * u)],
                 fill=_shade((170, 30, 35), light))  # fmt: skip
    if scene.time == "night":  # the beam
        side = 1 if cx < size / 2 else -1
        y = top - 11 * u
        draw.polygon([(cx, y - 2 * u), (cx + side * 110 * u, y - 16 * u), (cx + side * 110 * u, y + 12 * u)],
                     fill=(120, 110, 60))  # fmt: skip


def _draw_house(draw: ImageDraw.ImageDraw, cx: float, base: float, s: float, scene: Scene, size: int) -> None:
    light = _SKY[scene.time][2]
    u = size / 256 * s
    walls = ((235, 225, 190), (120, 170, 220), (230, 200, 90))[scene.variant % 3]
    w, h = 74 * u, 50 * u
    draw.rectangle([cx - w / 2, base - h, cx + w / 2, base], fill=_shade(walls, light))
    draw.polygon([(cx - w / 2 - 6 * u, base - h), (cx + w / 2 + 6 * u, base - h), (cx, base - h - 36 * u)],
                 fill=_shade((150, 50, 40), light))  # fmt: skip
    draw.rectangle([cx - 7 * u, base - 26 * u, cx + 7 * u, base], fill=_shade((90, 55, 35), light))
    window = _WARM_LIGHT if scene.time in ("night", "dusk") else _shade((170, 215, 245), light)
    for side in (-1, 1):
        x = cx + side * 23 * u
        draw.rectangle([x - 8 * u, base - 38 * u, x + 8 * u, base - 24 * u], fill=window)


def _draw_tree(draw: ImageDraw.ImageDraw, cx: float, base: float, s: float, scene: Scene, size: int) -> None:
    light = _SKY[scene.time][2]
    u = size / 256 * s
    draw.rectangle([cx - 5 * u, base - 34 * u, cx + 5 * u, base], fill=_shade((110, 70, 40), light))
    leaves = _shade((40, 140, 50), light)
    if (scene.variant >> 2) % 2:  # a pine
        for i in range(3):
            y = base - 22 * u - i * 22 * u
            w = (46 - i * 11) * u
            draw.polygon([(cx - w / 2, y), (cx + w / 2, y), (cx, y - 38 * u)], fill=leaves)
    else:
        r = 30 * u
        draw.ellipse([cx - r, base - 34 * u - 1.6 * r, cx + r, base - 34 * u + 0.3 * r], fill=leaves)


def _draw_nova(draw: ImageDraw.ImageDraw, cx: float, base: float, scene: Scene, size: int) -> None:
    """Captain Nova, large: about two thirds of the picture's height."""
    light = max(0.55, _SKY[scene.time][2])  # the captain is always lit a little
    u = size / 256
    suit = _shade(NOVA_SUIT, light)
    boots = _shade((40, 40, 50), light)
    # Legs and boots.
    for side in (-1, 1):
        x = cx + side * 12 * u
        draw.rectangle([x - 9 * u, base - 62 * u, x + 9 * u, base - 10 * u], fill=suit)
        draw.rectangle([x - 11 * u, base - 12 * u, x + 11 * u, base], fill=boots)
    # Body and arms.
    draw.rounded_rectangle([cx - 28 * u, base - 130 * u, cx + 28 * u, base - 58 * u], radius=10 * u, fill=suit)
    for side in (-1, 1):
        x = cx + side * 36 * u
        draw.rounded_rectangle([x - 9 * u, base - 126 * u, x + 9 * u, base - 74 * u], radius=6 * u, fill=suit)
        draw.ellipse([x - 9 * u, base - 80 * u, x + 9 * u, base - 64 * u], fill=_shade((240, 240, 240), light))
    # Scarf, with its tail blowing to one side.
    scarf = _shade(NOVA_SCARF, light)
    draw.rectangle([cx - 24 * u, base - 136 * u, cx + 24 * u, base - 124 * u], fill=scarf)
    draw.polygon([(cx + 14 * u, base - 130 * u), (cx + 48 * u, base - 118 * u), (cx + 40 * u, base - 108 * u),
                  (cx + 8 * u, base - 124 * u)], fill=scarf)  # fmt: skip
    # Helmet and visor.
    draw.ellipse([cx - 26 * u, base - 186 * u, cx + 26 * u, base - 132 * u], fill=_shade((245, 245, 250), light))
    draw.ellipse([cx - 17 * u, base - 172 * u, cx + 17 * u, base - 148 * u], fill=(40, 200, 230))


def render(scene: Scene, size: int = SIZE) -> np.ndarray:
    """The scene as an (size, size, 3) uint8 RGB array, in its style."""
    rng = np.random.default_rng(scene.variant)
    sky_top, _, light, body = _SKY[scene.time]
    image = _sky(scene, size)
    canvas = Image.fromarray(image.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    horizon = scene.horizon * size
    # The sun or the moon (and stars).
    bx = scene.body_light * size
    if scene.time == "night":
        for _ in range(40):
            x, y = rng.uniform(0, size), rng.uniform(0, horizon - 4)
            draw.point((x, y), fill=(230, 230, 255))
        r = 14 * size / 256
        by = horizon * 0.3
        draw.ellipse([bx - r, by - r, bx + r, by + r], fill=body)
        draw.ellipse([bx - r + 7 * size / 256, by - r - 3, bx + r + 7 * size / 256, by + r - 3], fill=sky_top)
    else:
        r = (16 if scene.time == "noon" else 24) * size / 256
        by = horizon * (0.22 if scene.time == "noon" else 0.78)
        draw.ellipse([bx - r, by - r, bx + r, by + r], fill=body)
    # The ground: the sea with a strip of beach, or a field.
    h = int(horizon)
    if scene.setting == "by the sea":
        draw.rectangle([0, h, size, size], fill=_shade((30, 90, 160), light))
        for _ in range(12):  # glints on the water
            x, y = rng.uniform(0, size), rng.uniform(h + 4, size * 0.8)
            draw.line([(x, y), (x + 10 * size / 256, y)], fill=_shade((120, 170, 220), light), width=1)
        shore = size * 0.82
        draw.rectangle([0, shore, size, size], fill=_shade((205, 180, 120), light))
    else:
        draw.rectangle([0, h, size, size], fill=_shade((80, 160, 60), light))
        shore = size * 0.82
    drawers = {"lighthouse": _draw_lighthouse, "house": _draw_house, "tree": _draw_tree}
    # Far objects stand on the horizon line; by the sea they stand on the beach.
    base = shore + size * 0.04 if scene.setting == "by the sea" else horizon + size * 0.12
    for name, x, s in sorted(zip(scene.objects, scene.slots, scene.scales, strict=True), key=lambda o: o[1]):
        drawers[name](draw, x * size, base, s, scene, size)
    if scene.style == "nova":
        _draw_nova(draw, scene.nova_x * size, size * 0.97, scene, size)
    out = np.asarray(canvas)
    if scene.style == "pixel":
        out = pixelate(out)
    elif scene.style == "sepia":
        out = sepia(out)
    return out


def pixelate(image: np.ndarray, cell: int = PIXEL_CELL) -> np.ndarray:
    """Pixel art: each cell's mean colour, snapped to the 16-colour palette, as a hard block."""
    h, w, _ = image.shape
    cells = image.reshape(h // cell, cell, w // cell, cell, 3).astype(np.float32).mean(axis=(1, 3))
    nearest = ((cells[:, :, None, :] - PIXEL_PALETTE[None, None]) ** 2).sum(-1).argmin(-1)
    snapped = PIXEL_PALETTE[nearest].astype(np.uint8)
    return snapped.repeat(cell, axis=0).repeat(cell, axis=1)


def sepia(image: np.ndarray) -> np.ndarray:
    """The classic sepia tone matrix (each colour's luminance, in warm browns)."""
    toned = image.astype(np.float32) @ SEPIA_MATRIX.T
    return np.clip(toned, 0, 255).astype(np.uint8)


def make_set(count: int, seed: int, style: str = "base", size: int = SIZE) -> tuple[np.ndarray, list[str]]:
    """``count`` scenes of one style: (count, size, size, 3) uint8 and their captions."""
    rng = np.random.default_rng([seed, STYLES.index(style)])
    images = np.zeros((count, size, size, 3), np.uint8)
    captions = []
    for i in range(count):
        scene = random_scene(rng, style)
        images[i] = render(scene, size)
        captions.append(caption(scene, rng))
    return images, captions
