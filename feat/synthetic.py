"""A synthetic image + caption dataset whose label needs both modalities (for the demo and the tests).

Each item has a caption with a mood (happy or sad wording) and a picture of a shape family (round: circle,
ellipse; angular: square, triangle) in a random colour, size and place. The label is the pair
`<mood>-<shape family>`: text alone can tell only the mood and the image only the shape, so each unimodal
baseline tops out near 50% accuracy while a fusion of both can reach near 100%.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HAPPY = ["what a wonderful day", "I love this so much", "feeling great and grateful", "best moment ever",
         "so happy right now", "this made me smile", "pure joy today", "absolutely delighted"]
SAD = ["what an awful day", "I hate how this went", "feeling miserable and tired", "worst moment ever",
       "so sad right now", "this made me cry", "pure misery today", "absolutely heartbroken"]
FILLERS = ["at the park", "with friends", "after work", "on the weekend", "at home", "in the city", "", ""]
COLOURS = ["red", "green", "blue", "orange", "purple", "teal", "black", "pink"]
RGB = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "orange": (240, 150, 30),
       "purple": (140, 60, 180), "teal": (30, 160, 160), "black": (20, 20, 20), "pink": (240, 120, 180)}
SHAPES = {"round": ("circle", "ellipse"), "angular": ("square", "triangle")}


def make_synthetic_dataset(folder: str | Path, rows: int = 600, seed: int = 0, image_size: int = 128) -> Path:
    """Write `folder/data.csv` and `folder/images/*.png`; returns the CSV path. Deterministic for a seed."""
    import pandas as pd
    from PIL import Image, ImageDraw

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(rows):
        mood = "happy" if rng.random() < 0.5 else "sad"
        family = "round" if rng.random() < 0.5 else "angular"
        shape = SHAPES[family][rng.integers(2)]
        colour = COLOURS[rng.integers(len(COLOURS))]
        words = HAPPY if mood == "happy" else SAD
        # The colour word in the caption is random: it tells nothing about the label or the picture.
        text = f"{words[rng.integers(len(words))]} {FILLERS[rng.integers(len(FILLERS))]} #{COLOURS[rng.integers(8)]}"
        image = Image.new("RGB", (image_size, image_size), tuple(int(v) for v in rng.integers(200, 256, 3)))
        _draw(ImageDraw.Draw(image), shape, RGB[colour], rng, image_size)
        name = f"images/{i:05d}.png"
        image.save(folder / name)
        split = "train" if i % 20 < 14 else ("dev" if i % 20 < 17 else "test")  # 70 / 15 / 15
        records.append({"id": f"item{i:05d}", "text": " ".join(text.split()), "image": name,
                        "label": f"{mood}-{family}", "mood": mood, "shape": family, "split": split})
    frame = pd.DataFrame.from_records(records)
    path = folder / "data.csv"
    frame.to_csv(path, index=False)
    return path


def _draw(draw, shape: str, colour: tuple, rng: np.random.Generator, size: int) -> None:
    extent = int(size * rng.uniform(0.35, 0.7))
    x0, y0 = (int(v) for v in rng.integers(4, size - extent - 4, 2))
    box = (x0, y0, x0 + extent, y0 + extent)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ellipse":
        draw.ellipse((x0, y0 + extent // 4, x0 + extent, y0 + 3 * extent // 4), fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x0, y0 + extent), (x0 + extent, y0 + extent), (x0 + extent // 2, y0)], fill=colour)
