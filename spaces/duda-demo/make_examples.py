"""Regenerate the Space's example images: procedural street scenes, not taken from any dataset.

    python spaces/duda-demo/make_examples.py

Needs the duda_hf package (for its synthetic scene generator); the Space itself only ships the JPEG files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from duda_hf.data.synthetic import render_scene

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
HEIGHT, WIDTH = 512, 1024  # the Cityscapes evaluation size the student is exported with
MAX_BYTES = 100_000
# (file name, domain, seed): the game-like source look and the textured dusk look the student was adapted to.
EXAMPLES = (
    ("street_dusk.jpg", "target", 11),
    ("street_dusk_traffic.jpg", "target", 27),
    ("street_game_style.jpg", "source", 5),
)


def main() -> None:
    EXAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    for name, domain, seed in EXAMPLES:
        image, _ = render_scene(np.random.default_rng(seed), domain, height=HEIGHT, width=WIDTH)
        path = EXAMPLES_DIR / name
        for quality in (85, 75, 65, 55):  # the first quality that keeps the file small enough to commit
            Image.fromarray(image).save(path, format="JPEG", quality=quality, optimize=True)
            if path.stat().st_size <= MAX_BYTES:
                break
        print(f"{path} {path.stat().st_size / 1000:.0f} kB (quality {quality})")


if __name__ == "__main__":
    main()
