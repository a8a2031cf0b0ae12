"""The synthetic benchmark's scene geometry: a perspective street laid out into trainIds and material instances.

`street_layout` samples one scene (a street with buildings, vegetation, poles, vehicles and people; the painters
draw each thing at its ground contact point, far to near) into a `Scene`: a trainId label map plus a map of
"material instances", which `duda_hf/data/synthetic_appearance.py` then colours. Nothing here looks at the domain,
so every domain shares one layout distribution (`duda_hf/data/synthetic.py`).
"""

from __future__ import annotations

import itertools

import numpy as np

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


class Scene:
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


def street_layout(rng: np.random.Generator, h: int, w: int) -> Scene:
    """Sample the geometry of one street scene; uses no domain information."""
    s = Scene(h, w)
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
