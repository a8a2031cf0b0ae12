"""The synthetic benchmark's domains: how a laid-out scene is coloured in `source`, `target` and `pretrain`.

`colour_scene` gives each material instance of a `Scene` (`duda_hf/data/synthetic_layout.py`) a colour: `source` is
flat-shaded and game-like; `target` is a textured, noisy dusk scene whose palette moves some classes towards other
classes' source colours (`TargetShift`: how far, how dark, how noisy); `pretrain` is a random colour per instance
with random camera effects. Only this stage looks at the domain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from duda_hf.data.synthetic_layout import Scene

# The pretraining domain's random look (`DOMAINS` in duda_hf/data/synthetic.py): the ranges of its texture gain,
# exposure and sensor noise.
_PRETRAIN_TEXTURE, _PRETRAIN_EXPOSURE, _PRETRAIN_NOISE = (0.0, 0.6), (0.5, 1.2), (0.0, 8.0)

# material -> (source colours, target colours, target texture strength). Each object picks one
# colour per domain. Target colours drift a share (TargetShift.colour_drift) of the way towards these: buildings towards road-grey, terrain towards
# sidewalk-beige, vegetation towards dark olive, cars/people/signs towards unrelated colours and poles
# from dark towards light, while layout stays the most reliable cue.
MATERIALS: dict[str, tuple[list, list, float]] = {
    "sky": ([(110, 180, 250)], [(60, 55, 110)], 0.02),
    "road": ([(85, 85, 95)], [(150, 122, 102)], 0.12),
    "marking": ([(245, 245, 245)], [(190, 185, 160)], 0.10),
    "sidewalk": ([(205, 175, 145)], [(160, 160, 152)], 0.12),
    "terrain": ([(175, 200, 85)], [(185, 160, 110)], 0.30),
    "facade": ([(175, 85, 65), (190, 110, 70)], [(120, 128, 145), (140, 140, 135)], 0.15),
    "far_facade": ([(150, 120, 150)], [(95, 100, 120)], 0.08),
    "window": ([(130, 190, 235)], [(240, 200, 120), (45, 55, 75)], 0.05),
    "wall": ([(165, 155, 125)], [(140, 105, 95)], 0.15),
    "fence": ([(150, 110, 60)], [(110, 120, 112)], 0.25),
    "foliage": ([(40, 155, 45)], [(85, 100, 55)], 0.40),
    "bark": ([(110, 70, 35)], [(65, 55, 50)], 0.20),
    "pole": ([(60, 60, 60)], [(150, 150, 142)], 0.05),
    "sign": ([(40, 90, 225)], [(200, 50, 40), (235, 235, 235)], 0.05),
    "light_housing": ([(235, 195, 25)], [(40, 40, 42)], 0.05),
    "lamp": ([(255, 40, 40), (40, 255, 90)], [(255, 70, 50), (90, 255, 150)], 0.0),
    "car_paint": ([(35, 70, 210)], [(170, 170, 175), (40, 40, 45), (215, 215, 215), (165, 35, 30), (35, 45, 90)], 0.05),
    "truck_cargo": ([(120, 60, 150)], [(200, 200, 195), (60, 80, 120)], 0.08),
    "bus_paint": ([(245, 165, 40)], [(40, 110, 160), (200, 60, 50)], 0.05),
    "glass": ([(130, 190, 235)], [(30, 40, 55)], 0.05),
    "tyre": ([(25, 25, 25)], [(25, 25, 25)], 0.05),
    "tail_light": ([(255, 0, 0)], [(255, 60, 40)], 0.0),
    "skin": ([(240, 190, 150)], [(175, 135, 115)], 0.05),
    "coat": ([(225, 40, 60)], [(60, 60, 70), (120, 45, 40), (45, 70, 60), (150, 130, 100)], 0.08),
    "trousers": ([(40, 40, 120)], [(40, 40, 50)], 0.05),
    "rider_coat": ([(250, 130, 30)], [(205, 205, 70), (60, 60, 70)], 0.08),
    "bicycle": ([(205, 35, 165)], [(70, 70, 70), (180, 180, 180)], 0.05),
    "motorcycle": ([(110, 40, 180)], [(150, 30, 30), (30, 30, 30)], 0.05),
}
_EMISSIVE = {"lamp", "tail_light"}  # light sources keep their brightness at dusk


@dataclass(frozen=True)
class TargetShift:
    """How the target camera differs from the source: the default is the benchmark's dusk shift.

    - `colour_drift`: the share of the way each target colour moves from its source colour to the target palette;
    - `exposure`: the range of the dusk exposure factor; `noise`: the range of the sensor noise sigma (0-255 scale);
    - `texture`: the gain of the target's surface texture.

    Another shift makes a second benchmark to confirm a method on data it was not tuned on
    (`duda-make-synthetic --colour_drift ... --exposure LO HI --noise LO HI --texture ...`).
    """

    colour_drift: float = 0.25
    exposure: tuple[float, float] = (0.65, 0.9)
    noise: tuple[float, float] = (2.0, 5.0)
    texture: float = 0.5


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth random field with feature size `cell` pixels (bilinear upsampled white noise)."""
    grid = rng.standard_normal((h // cell + 2, w // cell + 2), dtype=np.float32)
    fy, fx = np.arange(h, dtype=np.float32) / cell, np.arange(w, dtype=np.float32) / cell
    y0, x0 = fy.astype(int), fx.astype(int)
    wy, wx = (fy - y0)[:, None], (fx - x0)[None, :]
    top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x0 + 1] * wx
    bottom = grid[y0 + 1][:, x0] * (1 - wx) + grid[y0 + 1][:, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def _blur(img: np.ndarray) -> np.ndarray:
    """3x3 binomial blur, a cheap stand-in for camera optics."""
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    v = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
    return (v[:, :-2] + 2 * v[:, 1:-1] + v[:, 2:]) / 4


def _pick(rng: np.random.Generator, colours: list) -> tuple:
    return colours[rng.integers(len(colours))]


def colour_scene(s: Scene, domain: str, rng: np.random.Generator, shift: TargetShift) -> np.ndarray:
    """Colour a laid-out scene in the given domain's style (`shift`: the target's)."""
    h, w = s.label.shape
    if domain == "pretrain":
        return _random_appearance(s, rng)
    target = domain == "target"
    table = np.array([_pick(rng, MATERIALS[m][0]) for m in s.materials], np.float32)
    if target:
        # Target colours drift part of the way to another palette: a clear shift, yet not unrelated colours
        # (with a full drift a source-trained network scores near chance and no adaptation can start).
        drifted = np.array([_pick(rng, MATERIALS[m][1]) for m in s.materials], np.float32)
        table = (1 - shift.colour_drift) * table + shift.colour_drift * drifted
    table += rng.uniform(-1, 1, table.shape).astype(np.float32) * (22 if target else 8)  # per-object colour variation
    img = table[s.inst]
    if target:
        strength = np.float32([MATERIALS[m][2] for m in s.materials])[s.inst]
        grain = 0.6 * _value_noise(rng, h, w, 2) + 0.4 * _value_noise(rng, h, w, 8)
        img *= (1 + shift.texture * strength * grain)[..., None]
        rows = (np.arange(h, dtype=np.float32) / h)[:, None]
        glow = np.clip(rows / 0.45, 0, 1)[..., None] ** 2  # dusk sky: orange towards the horizon
        sky = (1 - glow) * table[0] + glow * np.float32([235, 150, 95]) * np.float32(rng.uniform(0.85, 1.1))
        img = np.where((s.inst == 0)[..., None], sky, img)
        cols = (np.arange(w, dtype=np.float32) / w)[None, :] - 0.5
        light = rng.uniform(*shift.exposure) * (1 + rng.uniform(-0.35, 0.35) * cols)  # one side darker
        light = light * (1 - rng.uniform(0.2, 0.45) * 2 * (cols**2 + (rows - 0.5) ** 2))  # vignetting
        emissive = np.array([m in _EMISSIVE for m in s.materials])[s.inst]
        img *= np.where(emissive, 1, light.astype(np.float32))[..., None] * np.exp(rng.normal(0, 0.08, 3)).astype(np.float32)  # colour cast
        img = _blur(img) + rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(*shift.noise)  # optics, then sensor noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _random_appearance(s: Scene, rng: np.random.Generator) -> np.ndarray:
    """The pretraining domain's look: a random colour per material instance, then random camera effects."""
    h, w = s.label.shape
    img = rng.uniform(0, 255, (len(s.materials), 3)).astype(np.float32)[s.inst]
    grain = 0.6 * _value_noise(rng, h, w, 2) + 0.4 * _value_noise(rng, h, w, 8)
    img *= (1 + rng.uniform(*_PRETRAIN_TEXTURE) * grain)[..., None]
    img *= rng.uniform(*_PRETRAIN_EXPOSURE) * np.exp(rng.normal(0, 0.15, 3)).astype(np.float32)
    if rng.random() < 0.5:
        img = _blur(img)
    img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(*_PRETRAIN_NOISE)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
