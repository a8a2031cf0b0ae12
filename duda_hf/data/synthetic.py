"""Procedural street scenes in two visual domains, a small stand-in for GTA -> Cityscapes.

A scene is drawn in two stages. `_layout` samples the geometry (a perspective street with
buildings, vegetation, poles, vehicles and people) into a trainId label map plus a map of
"material instances"; `_appearance` then colours those instances. Only the second stage looks
at the domain, so both domains share one layout distribution and differ in appearance alone:
`source` is flat-shaded and game-like, `target` is a textured, noisy dusk scene whose palette
moves some classes towards other classes' source colours.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from duda_hf.jsonio import write_json

DOMAINS = ("source", "target", "pretrain")
# The pretraining domain (a stand-in for ImageNet pretraining, docs/reproducibility.md): the same layouts with
# every material instance in a random colour, random texture, exposure, colour cast, noise and blur, so that only
# shape and context identify a class. It holds no target image or label.
_PRETRAIN_TEXTURE, _PRETRAIN_EXPOSURE, _PRETRAIN_NOISE = (0.0, 0.6), (0.5, 1.2), (0.0, 8.0)

# Cityscapes trainIds, in the order of duda_hf.data.labels.CITYSCAPES_CLASSES.
(
    ROAD,
    SIDEWALK,
    BUILDING,
    WALL,
    FENCE,
    POLE,
    TRAFFIC_LIGHT,
    TRAFFIC_SIGN,
    VEGETATION,
    TERRAIN,
    SKY,
    PERSON,
    RIDER,
    CAR,
    TRUCK,
    BUS,
    TRAIN,
    MOTORCYCLE,
    BICYCLE,
) = range(19)

# Bump whenever the generator's output changes, so cached benchmarks get rebuilt.
_GENERATOR_VERSION = 3

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


# The synthetic benchmarks, name -> (folder, `scripts/make_synthetic.py` flags): the one the recipes were tuned on
# (dusk), and a second one with another shift (night: darker, noisier, more textured, colours further from the
# source) to confirm a configuration on data it was not tuned on.
SYNTHETIC_BENCHMARKS = {
    "dusk": ("data_synthetic", []),
    "night": (
        "data_synthetic_night",
        ["--seed", "7", "--colour_drift", "0.35", "--exposure", "0.4", "0.7", "--noise", "4", "8", "--texture", "0.8"],
    ),
}


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


class _Scene:
    """Label map plus a per-pixel material-instance index; colours are chosen later."""

    def __init__(self, height: int, width: int):
        self.label = np.full((height, width), SKY, np.uint8)
        self.inst = np.zeros((height, width), np.int32)
        self.materials = ["sky"]  # instance 0 is the sky

    def new(self, material: str) -> int:
        self.materials.append(material)
        return len(self.materials) - 1

    def fill(self, mask: np.ndarray, cls: int, material: str, cols: slice = slice(None)) -> None:
        """Paint a new instance where `mask` (covering columns `cols`) is set."""
        self.label[:, cols][mask], self.inst[:, cols][mask] = cls, self.new(material)

    def rect(self, x0, y0, x1, y1, cls: int, inst: int) -> None:
        """Box in float pixel coordinates, at least one pixel wide/high so far poles survive."""
        h, w = self.label.shape
        x0, y0 = round(x0), round(y0)
        x1, y1 = max(round(x1), x0 + 1), max(round(y1), y0 + 1)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x0 < x1 and y0 < y1:
            self.label[y0:y1, x0:x1], self.inst[y0:y1, x0:x1] = cls, inst

    def ellipse(self, cx, cy, rx, ry, cls: int, inst: int, hole=0.0, diamond=False) -> None:
        """Filled ellipse (or diamond); `hole` > 0 leaves a ring, e.g. for wheels."""
        h, w = self.label.shape
        rx, ry = max(rx, 0.6), max(ry, 0.6)
        x0, x1, y0, y1 = max(int(cx - rx), 0), min(int(cx + rx) + 2, w), max(int(cy - ry), 0), min(int(cy + ry) + 2, h)
        if x0 >= x1 or y0 >= y1:
            return
        yy, xx = np.ogrid[y0:y1, x0:x1]
        u, v = np.abs(xx - cx) / rx, np.abs(yy - cy) / ry
        d = u + v if diamond else np.sqrt(u**2 + v**2)
        mask = (d <= 1) & (d >= hole)
        self.label[y0:y1, x0:x1][mask], self.inst[y0:y1, x0:x1][mask] = cls, inst


# Object painters. (gx, gy) is the ground contact point, `sc` pixels per world unit (one world
# unit = image height at the bottom row), so size shrinks linearly towards the horizon.
def _car(s, rng, gx, gy, sc):
    cw = sc * rng.uniform(0.4, 0.55)
    ch, paint = cw * rng.uniform(0.7, 0.85), s.new("car_paint")
    s.rect(gx - cw / 2, gy - 0.62 * ch, gx + cw / 2, gy - 0.1 * ch, CAR, paint)
    s.rect(gx - 0.4 * cw, gy - ch, gx + 0.4 * cw, gy - 0.6 * ch, CAR, paint)
    s.rect(gx - 0.32 * cw, gy - 0.92 * ch, gx + 0.32 * cw, gy - 0.66 * ch, CAR, s.new("glass"))
    tyre, tail = s.new("tyre"), s.new("tail_light")
    for side in (-1, 1):
        s.rect(gx + side * 0.36 * cw - 0.1 * cw, gy - 0.2 * ch, gx + side * 0.36 * cw + 0.1 * cw, gy, CAR, tyre)
        s.rect(gx + side * 0.4 * cw - 0.06 * cw, gy - 0.5 * ch, gx + side * 0.4 * cw + 0.06 * cw, gy - 0.4 * ch, CAR, tail)


def _big_vehicle(s, rng, gx, gy, sc):
    is_bus = rng.random() < 0.5
    cls, cw = (BUS, sc * rng.uniform(0.6, 0.75)) if is_bus else (TRUCK, sc * rng.uniform(0.55, 0.7))
    ch = cw * rng.uniform(1.0, 1.25)
    s.rect(gx - cw / 2, gy - ch, gx + cw / 2, gy - 0.08 * ch, cls, s.new("bus_paint" if is_bus else "truck_cargo"))
    if is_bus:
        s.rect(gx - 0.42 * cw, gy - 0.9 * ch, gx + 0.42 * cw, gy - 0.55 * ch, cls, s.new("glass"))
    tyre = s.new("tyre")
    for side in (-1, 1):
        s.rect(gx + side * 0.36 * cw - 0.1 * cw, gy - 0.12 * ch, gx + side * 0.36 * cw + 0.1 * cw, gy, cls, tyre)


def _person(s, rng, gx, gy, sc, cls=PERSON, coat="coat", seated=False):
    ph = sc * rng.uniform(0.4, 0.5)
    s.ellipse(gx, gy - 0.92 * ph, 0.07 * ph, 0.08 * ph, cls, s.new("skin"))
    s.rect(gx - 0.13 * ph, gy - 0.84 * ph, gx + 0.13 * ph, gy - 0.45 * ph, cls, s.new(coat))
    legs, gap = s.new("trousers"), 0.0 if seated else 0.02 * ph
    s.rect(gx - 0.11 * ph, gy - 0.45 * ph, gx - gap, gy, cls, legs)
    s.rect(gx + gap, gy - 0.45 * ph, gx + 0.11 * ph, gy, cls, legs)


def _rider(s, rng, gx, gy, sc):
    r, motor = sc * rng.uniform(0.08, 0.1), rng.random() < 0.3
    cls, frame = (MOTORCYCLE, s.new("motorcycle")) if motor else (BICYCLE, s.new("bicycle"))
    tyre = s.new("tyre") if motor else frame
    for side in (-1, 1):
        s.ellipse(gx + side * 1.8 * r, gy - r, r, r, cls, tyre, hole=0.0 if motor else 0.7)
    if motor:
        s.ellipse(gx, gy - 1.6 * r, 2.0 * r, 0.8 * r, cls, frame)
    else:
        s.rect(gx - 1.8 * r, gy - 1.9 * r, gx + 1.8 * r, gy - 1.6 * r, cls, frame)
        s.rect(gx - 0.2 * r, gy - 1.9 * r, gx + 0.2 * r, gy - r, cls, frame)
    _person(s, rng, gx, gy - 1.5 * r, sc * 0.85, cls=RIDER, coat="rider_coat", seated=True)


def _pole(s, rng, gx, gy, sc, towards_road):
    top, pw = gy - sc * rng.uniform(0.7, 0.95), max(1.0, 0.012 * sc)
    s.rect(gx - pw / 2, top, gx + pw / 2, gy, POLE, s.new("pole"))
    kind, size = rng.random(), sc * rng.uniform(0.05, 0.08)
    if kind < 0.45:
        shape = rng.integers(3)  # square, round or diamond sign
        face = s.new("sign")
        if shape == 0:
            s.rect(gx - size, top, gx + size, top + 1.6 * size, TRAFFIC_SIGN, face)
        else:
            s.ellipse(gx, top + size, size, size, TRAFFIC_SIGN, face, diamond=shape == 2)
    elif kind < 0.8:
        s.rect(gx - 0.6 * size, top, gx + 0.6 * size, top + 2.8 * size, TRAFFIC_LIGHT, s.new("light_housing"))
        lamp_y = top + size * (0.5 + 0.9 * rng.integers(3))
        s.ellipse(gx, lamp_y, 0.4 * size, 0.4 * size, TRAFFIC_LIGHT, s.new("lamp"))
    else:  # street lamp: an arm over the road, still labelled pole
        arm = s.new("pole")
        s.rect(min(gx, gx + towards_road * 3 * size), top, max(gx, gx + towards_road * 3 * size), top + pw, POLE, arm)


def _tree(s, rng, gx, gy, sc):
    trunk_top = gy - sc * rng.uniform(0.2, 0.35)
    s.rect(gx - 0.015 * sc, trunk_top, gx + 0.015 * sc, gy, VEGETATION, s.new("bark"))
    crown = s.new("foliage")
    for _ in range(rng.integers(2, 5)):
        rx = sc * rng.uniform(0.08, 0.16)
        cx, cy = gx + rng.uniform(-1, 1) * rx * 0.6, trunk_top - rng.uniform(0.2, 0.8) * rx
        s.ellipse(cx, cy, rx, rx * rng.uniform(0.8, 1.2), VEGETATION, crown)


def _layout(rng: np.random.Generator, h: int, w: int) -> _Scene:
    """Sample the geometry of one street scene; uses no domain information."""
    s = _Scene(h, w)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon, vx = h * rng.uniform(0.36, 0.46), w * rng.uniform(0.4, 0.6)
    depth = np.clip((y - horizon) / (h - horizon), 1e-3, None)  # 1 at the bottom row, 0 at the horizon
    dx = x - vx
    lateral = dx / depth  # signed distance from the street axis in bottom-row pixels
    ground = y > horizon
    road = w * rng.uniform(0.28, 0.45)

    # Skyline at the far end of the street, later covered below the horizon by the ground.
    edges = np.r_[0, np.sort(rng.uniform(0, w, 10)), w]
    for a, b in itertools.pairwise(edges):
        green = rng.random() < 0.35
        cls, mat = (VEGETATION, "foliage") if green else (BUILDING, "far_facade")
        s.rect(a, horizon - h * rng.uniform(0.02, 0.12), b, horizon + 1, cls, s.new(mat))

    walks = {}
    for side in (-1, 1):
        on_side = ground & (dx * side > 0)
        walks[side] = walk = road * rng.uniform(1.3, 1.7)
        outer = walk * (rng.uniform(1.2, 1.6) if rng.random() < 0.4 else 1.0)  # optional grass verge
        s.fill(on_side, TERRAIN, "terrain")
        s.fill(on_side & (np.abs(lateral) < walk), SIDEWALK, "sidewalk")

        # Facades run along the street at |lateral| == outer; their top edges also converge
        # on the vanishing point, and segments get wider towards the camera like real blocks.
        dist, beyond = dx * side, np.abs(lateral) > outer
        facade_depth = outer / np.maximum(dist, 1.0)  # distance along the street, 1 = bottom row
        height = (horizon + dist / outer * (h - horizon) - y) * facade_depth  # above the pavement
        near, urban = w * rng.uniform(0.03, 0.12), rng.random() < 0.75
        while near < w:
            far_end, near = near, near * rng.uniform(1.4, 2.3)
            slope = rng.uniform(0.5, 1.8) * horizon / (0.5 * w)
            in_segment = np.flatnonzero((dist[0] >= far_end) & (dist[0] < near))
            if in_segment.size == 0:
                continue
            cols = slice(in_segment[0], in_segment[-1] + 1)  # only these columns can change
            segment, d, up = beyond[:, cols], dist[:, cols], y[:, cols]
            if urban and rng.random() < 0.85:
                segment = segment & (up >= horizon - d * slope)
                s.fill(segment, BUILDING, "facade", cols)
                floor, column = h * rng.uniform(0.09, 0.15), rng.uniform(0.12, 0.25)
                storey, along = np.mod(height[:, cols] / floor, 1), np.mod(facade_depth[:, cols] / column, 1)
                windows = (storey > 0.35) & (storey < 0.8) & (height[:, cols] > floor) & (along > 0.3) & (along < 0.75)
                s.fill(segment & windows & (facade_depth[:, cols] < 3), BUILDING, "window", cols)
            else:
                ragged = 1 + 0.15 * np.sin(x[:, cols] * rng.uniform(0.2, 0.5) + rng.uniform(0, 6))
                s.fill(segment & (up >= horizon - d * slope * 0.6 * ragged), VEGETATION, "foliage", cols)
        if rng.random() < 0.3:  # a wall or fence in front of the facades
            cls, mat = (FENCE, "fence") if rng.random() < 0.6 else (WALL, "wall")
            s.fill(beyond & (dist > w * 0.05) & (height < h * rng.uniform(0.08, 0.15)) & ground, cls, mat)

    s.fill(ground & (np.abs(lateral) < road), ROAD, "road")
    mark_w, offset = road * 0.025, road * rng.uniform(-0.15, 0.15)
    dashes = np.mod(1 / depth * rng.uniform(0.6, 1.0) + rng.uniform(0, 1), 1) < 0.45
    markings = (np.abs(lateral - offset) < mark_w) & dashes & (depth > 0.05)
    if rng.random() < 0.5:
        markings |= (np.abs(np.abs(lateral) - 0.93 * road) < mark_w * 0.7) & (depth > 0.05)
    s.fill(ground & markings, ROAD, "marking")

    # Things: (depth, painter, lateral position, extra args); painted far to near for occlusion.
    sides = lambda n: rng.choice((-1, 1), n)
    things = [(rng.uniform(0.08, 0.7), _car, rng.uniform(-0.75, 0.75) * road, ()) for _ in range(rng.poisson(2.2))]
    things += [(rng.uniform(0.1, 0.8), _car, sd * rng.uniform(0.7, 0.85) * road, ()) for sd in sides(rng.poisson(0.8))]
    if rng.random() < 0.3:
        things.append((rng.uniform(0.1, 0.5), _big_vehicle, rng.uniform(-0.6, 0.6) * road, ()))
    things += [(rng.uniform(0.1, 0.7), _rider, sd * rng.uniform(0.6, 0.9) * road, ()) for sd in sides(rng.poisson(0.5))]
    things += [
        (rng.uniform(0.06, 0.7), _person, sd * rng.uniform(1.05, 0.95 * walks[sd] / road) * road, ()) for sd in sides(rng.poisson(2.0))
    ]
    things += [(rng.uniform(0.1, 0.9), _pole, sd * rng.uniform(1.05, 1.2) * road, (-sd,)) for sd in sides(1 + rng.poisson(1.5))]
    things += [(rng.uniform(0.1, 0.9), _tree, sd * walks[sd] * rng.uniform(0.9, 1.0), ()) for sd in sides(rng.poisson(1.5))]
    for t in rng.uniform(0.1, 0.8, rng.poisson(0.7)):  # grass patches on the pavement
        sd = rng.choice((-1, 1))
        gx, gy = vx + sd * walks[sd] * 0.85 * t, horizon + t * (h - horizon)
        s.ellipse(gx, gy, 0.15 * road * t, 0.03 * h * t + 0.5, TERRAIN, s.new("terrain"))
    for t, paint, lat, args in sorted(things, key=lambda thing: thing[0]):
        paint(s, rng, vx + lat * t, horizon + t * (h - horizon), h * t, *args)
    return s


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


def _appearance(s: _Scene, domain: str, rng: np.random.Generator, shift: TargetShift) -> np.ndarray:
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


def _random_appearance(s: _Scene, rng: np.random.Generator) -> np.ndarray:
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


def render_scene(
    rng: np.random.Generator, domain: str, *, height: int = 128, width: int = 256, shift: TargetShift | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render one street scene: `(image uint8 (H, W, 3), label uint8 (H, W) trainIds)`.

    The layout consumes `rng` identically in both domains, so generators in the same state
    yield identical labels for `source` and `target`; only the image differs.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    scene = _layout(rng, height, width)
    look_rng = np.random.default_rng(rng.integers(2**63))  # fixed rng use, whatever the domain
    return _appearance(scene, domain, look_rng, shift or TargetShift()), scene.label


def _png(array: np.ndarray) -> dict:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)  # noisy images: fast zlib
    return {"bytes": buf.getvalue(), "path": None}


def build_synthetic_benchmark(
    out_dir, *, num_source=600, num_target=600, num_target_val=100, height=128, width=256, seed=0, shift: TargetShift | None = None
) -> dict[str, str]:
    """Write `source`, `target` and `target_val` `datasets` folders under `out_dir`; return their paths.

    Each split has `image` (RGB) and `label` (mode "L" trainIds) Image columns and its own seed
    from `SeedSequence(seed).spawn`, so target and target_val never share scenes. Splits are
    written to temporary folders and renamed into place, and `synthetic_meta.json` is written
    last; if it matches the requested parameters the existing folders are reused untouched.
    """
    splits = {"source": ("source", num_source), "target": ("target", num_target), "target_val": ("target", num_target_val)}
    meta = {
        "version": _GENERATOR_VERSION,
        "num_source": num_source,
        "num_target": num_target,
        "num_target_val": num_target_val,
        "height": height,
        "width": width,
        "seed": seed,
    }
    if shift is not None and shift != TargetShift():  # the default benchmark keeps its meta, and so its bytes
        meta["shift"] = json.loads(json.dumps(asdict(shift)))  # as the meta file reads back (lists), so a rebuild reuses it
    return _write_splits(Path(out_dir), splits, meta, "synthetic_meta.json", height=height, width=width, seed=seed, shift=shift)


def build_pretraining_domain(out_dir, *, num_train=1200, num_val=100, height=128, width=256, seed=1000) -> dict[str, str]:
    """Write the labelled pretraining domain (`pretrain`, `pretrain_val`) under `out_dir`; return their paths.

    Random appearance on the benchmark's layouts (see `DOMAINS`), from a seed of its own: it stands in for
    ImageNet, which both networks of a real run start from, and holds nothing of the target domain.
    """
    splits = {"pretrain": ("pretrain", num_train), "pretrain_val": ("pretrain", num_val)}
    meta = {"version": _GENERATOR_VERSION, "num_train": num_train, "num_val": num_val, "height": height, "width": width, "seed": seed}
    return _write_splits(Path(out_dir), splits, meta, "pretraining_meta.json", height=height, width=width, seed=seed)


def _write_splits(
    out: Path, splits: dict[str, tuple[str, int]], meta: dict, meta_name: str, *, height: int, width: int, seed: int, shift=None
):
    """Render and save each split `name: (domain, count)` atomically; reuse them when `meta_name` matches `meta`."""
    import datasets  # heavy import; rendering alone doesn't need it

    paths = {name: str(out / name) for name in splits}
    meta_path = out / meta_name
    try:
        if json.loads(meta_path.read_text()) == meta and all(os.path.isdir(p) for p in paths.values()):
            return paths
    except (OSError, ValueError):
        pass
    out.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # a half-rebuilt set must not look complete
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    for (name, (domain, count)), split_seed in zip(splits.items(), np.random.SeedSequence(seed).spawn(len(splits))):
        rng = np.random.default_rng(split_seed)
        scenes = [render_scene(rng, domain, height=height, width=width, shift=shift) for _ in range(count)]
        columns = {"image": [_png(img) for img, _ in scenes], "label": [_png(lbl) for _, lbl in scenes]}
        table = datasets.Dataset.from_dict(columns, features=features)
        # from_dict picks a random fingerprint; a derived one keeps the saved bytes reproducible.
        fingerprint = hashlib.sha256(json.dumps([meta, name]).encode()).hexdigest()[:16]
        dataset = datasets.Dataset(table.data, info=table.info, fingerprint=fingerprint)
        tmp = out / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        dataset.save_to_disk(str(tmp))
        shutil.rmtree(paths[name], ignore_errors=True)
        os.replace(tmp, paths[name])
    tmp_meta = out / f".{meta_name}.tmp-{os.getpid()}"
    write_json(tmp_meta, meta)
    os.replace(tmp_meta, meta_path)
    return paths
