"""The built-in dataset: seeded, multi-label image-caption pairs drawn with PIL.

Each item is a small picture: one to four objects, each an object **shape** in an object
**colour**, on a background. Half of the backgrounds are one of four labelled **scene** kinds
(beach, night, meadow, room); the other half are plain backgrounds of a random colour that carry
no label, so that looking alike is not the same as sharing a label. Labels come in three families
(12 shapes, 10 colours, 4 scenes: 26 labels) and an item has from 2 to 9 of them.

The caption is written the way people tag photos: it mentions only some of the objects, names
colours only sometimes, uses synonyms ("disc", "crimson", "by the sea") and varied templates, and
may mention the scene. The image shows everything but can hide a shape behind another or put a
green object on grass. The two modalities are therefore noisy, complementary views of the labels,
as in MIRFlickr or NUS-WIDE, and no method can reach a perfect score.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same parameters give the same
pixels, captions and labels on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import numpy as np
from PIL import Image, ImageDraw
from pydantic import Field
from tqdm import tqdm

from cmhash.datasets.source import SourceData
from cmhash.settings import Section

if TYPE_CHECKING:
    from cmhash.datasets.settings import DatasetSettings

SHAPES = {
    "circle": ["circle", "disc", "round dot", "ball"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle", "wedge", "pyramid"],
    "star": ["star", "starburst", "five-pointed star"],
    "cross": ["cross", "plus sign", "plus"],
    "diamond": ["diamond", "rhombus", "lozenge"],
    "hexagon": ["hexagon", "six-sided shape", "honeycomb cell"],
    "ring": ["ring", "hoop", "donut", "loop"],
    "arrow": ["arrow", "pointer", "arrowhead"],
    "crescent": ["crescent", "moon", "half moon"],
    "pentagon": ["pentagon", "five-sided shape"],
    "oval": ["oval", "ellipse", "egg shape"],
}
COLOURS = {
    "red": ((215, 40, 40), ["red", "crimson", "scarlet"]),
    "orange": ((240, 140, 30), ["orange", "tangerine", "amber"]),
    "yellow": ((240, 215, 40), ["yellow", "golden", "lemon"]),
    "green": ((50, 170, 60), ["green", "emerald", "lime"]),
    "cyan": ((40, 200, 210), ["cyan", "turquoise", "aqua"]),
    "blue": ((40, 70, 210), ["blue", "navy", "cobalt"]),
    "purple": ((140, 50, 190), ["purple", "violet", "lilac"]),
    "pink": ((240, 120, 180), ["pink", "rose", "magenta"]),
    "brown": ((130, 80, 40), ["brown", "chocolate", "tan"]),
    "white": ((245, 245, 245), ["white", "snowy", "ivory"]),
}
SCENES = {
    "beach": ["on the beach", "by the sea", "on the sand", "at the seaside"],
    "night": ["at night", "under a night sky", "in the dark", "after sunset"],
    "meadow": ["in a meadow", "on the grass", "in a field", "outdoors on a lawn"],
    "room": ["indoors", "in a room", "on a tiled floor", "inside the house"],
}
LABEL_NAMES = [*SHAPES, *COLOURS, *SCENES]

TEMPLATES = [
    "{objects}",
    "{objects} {scene}",
    "a photo of {objects}",
    "a picture of {objects} {scene}",
    "there is {objects} {scene}",
    "{scene_cap}: {objects}",
    "look at {objects}!",
    "my drawing of {objects}",
    "some shapes, including {objects}",
    "{objects}, nothing else worth noting",
    "{scene_cap}, with {objects}",
    "close-up of {objects}",
]
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
class Options(Section):
    """``dataset.builtin``."""

    size: Annotated[int, Field(ge=20, le=10_000_000)] = 6000  # image-caption pairs
    image_size: Annotated[int, Field(ge=64, le=1024)] = 96  # pixels per side


DEFAULT_SPLIT = {"query": 1000, "train": 3000}
SCENE_PROBABILITY = 0.5  # the rest get an unlabelled plain background


@dataclass(frozen=True)
class BuiltinItem:
    image: np.ndarray
    caption: str
    labels: np.ndarray


def build(dataset: DatasetSettings, progress: bool) -> SourceData:
    """The built-in dataset that ``dataset.builtin`` and ``dataset.seed`` describe."""
    size = dataset.options.size
    data = generate_builtin(size, dataset.options.image_size, dataset.seed, progress=progress)
    return SourceData(labels=data["labels"], label_names=data["label_names"], texts=data["captions"],
                      text_item=np.arange(size), images=data["images"], summary={"items": size})


def expected(dataset: DatasetSettings, summary: dict[str, int]) -> dict[str, int]:
    return {"items": dataset.options.size, "labels": len(LABEL_NAMES)}


def generate_builtin(size: int, image_size: int, seed: int, progress: bool = True) -> dict:
    """Generate ``size`` items. Returns images (N, S, S, 3) uint8, captions, labels (N, 22) uint8."""
    rng = np.random.default_rng(seed)
    images = np.empty((size, image_size, image_size, 3), dtype=np.uint8)
    labels = np.zeros((size, len(LABEL_NAMES)), dtype=np.uint8)
    captions: list[str] = []
    for i in tqdm(range(size), desc="drawing built-in dataset", unit="item", disable=not progress):
        item = _draw_item(rng, image_size)
        images[i] = item.image
        labels[i] = item.labels
        captions.append(item.caption)
    return {"images": images, "captions": captions, "labels": labels, "label_names": list(LABEL_NAMES)}


def _draw_item(rng: np.random.Generator, size: int) -> BuiltinItem:
    scene = str(rng.choice(list(SCENES))) if rng.random() < SCENE_PROBABILITY else None
    n_objects = int(rng.choice([1, 2, 3, 4], p=[0.4, 0.3, 0.2, 0.1]))
    objects = [(str(rng.choice(list(SHAPES))), str(rng.choice(list(COLOURS)))) for _ in range(n_objects)]

    image = _background(rng, scene, size)
    draw = ImageDraw.Draw(image)
    for shape, colour in objects:
        _draw_object(draw, rng, shape, _jitter(rng, COLOURS[colour][0]), size)
    pixels = np.asarray(image, dtype=np.int16)
    pixels = pixels + rng.normal(0, 6, pixels.shape).astype(np.int16)  # sensor-like noise
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)

    label_vector = np.zeros(len(LABEL_NAMES), dtype=np.uint8)
    for name in {scene, *(s for s, _ in objects), *(c for _, c in objects)} - {None}:
        label_vector[LABEL_NAMES.index(name)] = 1
    return BuiltinItem(pixels, _caption(rng, scene, objects), label_vector)


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in rgb)


def _background(rng: np.random.Generator, scene: str | None, size: int) -> Image.Image:
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    if scene is None:  # plain, unlabelled: a vertical gradient between two random colours
        top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        for y in range(size):
            t = y / max(size - 1, 1)
            draw.line([0, y, size, y], fill=tuple(int(v) for v in (1 - t) * top + t * bottom))
    elif scene == "beach":
        horizon = int(size * rng.uniform(0.35, 0.6))
        draw.rectangle([0, 0, size, horizon], fill=_jitter(rng, (120, 180, 235)))
        draw.rectangle([0, horizon, size, size], fill=_jitter(rng, (225, 205, 150)))
    elif scene == "night":
        draw.rectangle([0, 0, size, size], fill=_jitter(rng, (20, 25, 60)))
        for _ in range(int(rng.integers(8, 25))):
            x, y = rng.integers(0, size, 2)
            draw.point((int(x), int(y)), fill=(230, 230, 240))
    elif scene == "meadow":
        draw.rectangle([0, 0, size, size], fill=_jitter(rng, (90, 150, 70)))
        for _ in range(int(rng.integers(20, 40))):
            x, y = (int(v) for v in rng.integers(0, size, 2))
            draw.line([x, y, x + int(rng.integers(-2, 3)), y - int(rng.integers(3, 8))], fill=(60, 115, 45))
    else:  # room: tiled floor
        draw.rectangle([0, 0, size, size], fill=_jitter(rng, (185, 180, 170)))
        step = int(rng.integers(10, 18))
        for v in range(0, size, step):
            draw.line([v, 0, v, size], fill=(140, 135, 130))
            draw.line([0, v, size, v], fill=(140, 135, 130))
    return image


def _draw_object(draw: ImageDraw.ImageDraw, rng: np.random.Generator, shape: str, fill: tuple, size: int) -> None:
    radius = size * rng.uniform(0.12, 0.24)
    cx, cy = rng.uniform(radius, size - radius, 2)
    angle = rng.uniform(0, 2 * math.pi)
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(radius / 3)))
    elif shape == "square":
        draw.polygon(_regular(cx, cy, radius, 4, angle), fill=fill)
    elif shape == "triangle":
        draw.polygon(_regular(cx, cy, radius, 3, angle), fill=fill)
    elif shape == "pentagon":
        draw.polygon(_regular(cx, cy, radius, 5, angle), fill=fill)
    elif shape == "oval":
        pts = [(math.cos(t), 0.55 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
        draw.polygon(_place(pts, cx, cy, radius, angle), fill=fill)
    elif shape == "hexagon":
        draw.polygon(_regular(cx, cy, radius, 6, angle), fill=fill)
    elif shape == "diamond":
        pts = [(0, -1), (0.6, 0), (0, 1), (-0.6, 0)]
        draw.polygon(_place(pts, cx, cy, radius, angle), fill=fill)
    elif shape == "star":
        pts = [
            (math.cos(k * math.pi / 5 - math.pi / 2) * (1 if k % 2 == 0 else 0.45),
             math.sin(k * math.pi / 5 - math.pi / 2) * (1 if k % 2 == 0 else 0.45))
            for k in range(10)
        ]
        draw.polygon(_place(pts, cx, cy, radius, angle), fill=fill)
    elif shape == "cross":
        w = 0.33
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
        draw.polygon(_place(pts, cx, cy, radius, angle), fill=fill)
    elif shape == "arrow":
        pts = [(-1, -0.25), (0.2, -0.25), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.25), (-1, 0.25)]
        draw.polygon(_place(pts, cx, cy, radius, angle), fill=fill)
    elif shape == "crescent":
        outer = [(math.cos(t), math.sin(t)) for t in np.linspace(-math.pi / 2, math.pi / 2, 12)]
        inner = [(0.45 * math.cos(t), math.sin(t)) for t in np.linspace(math.pi / 2, -math.pi / 2, 12)]
        draw.polygon(_place(outer + inner, cx, cy, radius, angle), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _regular(cx: float, cy: float, r: float, n: int, angle: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(angle + 2 * math.pi * k / n), cy + r * math.sin(angle + 2 * math.pi * k / n)) for k in range(n)]


def _place(points, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in points]


def _caption(rng: np.random.Generator, scene: str | None, objects: list[tuple[str, str]]) -> str:
    """A caption that mentions only part of the scene, in varied words."""
    distinct = sorted(set(objects), key=objects.index)
    n_mentioned = int(rng.integers(1, len(distinct) + 1))
    mentioned = [distinct[i] for i in sorted(rng.choice(len(distinct), n_mentioned, replace=False))]
    phrases = []
    for shape, colour in mentioned:
        count = objects.count((shape, colour))
        noun = str(rng.choice(SHAPES[shape]))
        words = [str(rng.choice(COLOURS[colour][1]))] if rng.random() < 0.6 else []
        if count > 1 and rng.random() < 0.7:
            phrases.append(" ".join([NUMBER_WORDS[count], *words, _plural(noun)]))
        else:
            first = (words or [noun])[0]
            phrases.append(" ".join(["an" if first[0] in "aeiou" else "a", *words, noun]))
    objects_text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    if scene is None or rng.random() < 0.5:
        template = str(rng.choice([t for t in TEMPLATES if "scene" not in t]))
        scene_text = ""
    else:
        template = str(rng.choice([t for t in TEMPLATES if "scene" in t]))
        scene_text = str(rng.choice(SCENES[scene]))
    caption = template.format(objects=objects_text, scene=scene_text, scene_cap=scene_text.capitalize())
    return " ".join(caption.split())


def _plural(noun: str) -> str:
    if noun.endswith(("x", "s", "sh", "ch")):
        return noun + "es"
    return noun + "s"
