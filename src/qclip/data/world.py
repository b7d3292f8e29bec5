"""The embedded world: a procedural scene generator with exact masks and depth, descriptions and alt-text.

Each image is a small ray-cast scene: a textured floor in perspective, a back wall, and 2-4 objects (cube,
sphere, cylinder, cone by default; `world.shapes` picks from eight) of eight colours and two sizes, with
occlusion, Lambert shading, cast shadows and pixel noise. Because we cast one ray per pixel centre, the class
mask and the metric depth (z along the camera axis, as NYUv2 stores it) are exact for the very pixels of the
image.

Text comes in two kinds, as in the paper's setting:
- reference descriptions, written from the scene graph (all visible objects, colours, sizes, left/right and
  front/behind, varied phrasing): what a careful human captioner would write (COCO-like, 5 per image);
- raw alt-text, web-like: with probability `alt_text_relevance` it names something really in the picture
  (often only partly right; a share `alt_text_context` of it names only the setting, floor and wall, not the
  objects); otherwise boilerplate, a file name, something that is not there, or nothing.

Left/right in the text refer to the image as rendered, so training must not flip images horizontally
(the manifest records `"hflip_safe": false`).

Every sample is a pure function of (seed, split, index), so shards can be generated in parallel, in any
order, and an interrupted generation resumes with identical output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .images import encode_jpg, encode_png
from .sample import Sample

SHAPES = ("cube", "sphere", "cylinder", "cone")  # the default world's (`world.shapes`)
# every shape the renderer knows; a world uses `world.shapes` of them, in that order (class ids follow it)
ALL_SHAPES = SHAPES + ("pillar", "dome", "disc", "wedge")
STUFF_CLASSES = ("floor", "wall")  # background: left out of the object-class mIoU
SEG_CLASSES = STUFF_CLASSES + SHAPES  # the default world's classes (`seg_classes`); class id = index
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.13, 0.12),
    "green": (0.15, 0.68, 0.2),
    "blue": (0.13, 0.28, 0.9),
    "yellow": (0.95, 0.85, 0.12),
    "purple": (0.55, 0.2, 0.75),
    "cyan": (0.12, 0.78, 0.85),
    "orange": (0.97, 0.5, 0.08),
    "pink": (0.97, 0.52, 0.72),
}
SIZES = {"small": 0.32, "large": 0.55}  # "radius" in metres
FLOORS = {"gray": (0.55, 0.55, 0.55), "beige": (0.78, 0.72, 0.58), "brown": (0.45, 0.33, 0.22), "dark": (0.25, 0.25, 0.27)}
WALLS = {"white": (0.9, 0.9, 0.88), "gray": (0.62, 0.63, 0.65), "blue": (0.55, 0.65, 0.8), "green": (0.6, 0.75, 0.6)}

# words a caption may use for each attribute; `captions.quality` maps them back to the scene graph
SHAPE_WORDS = {"cube": ("cube", "block", "box"), "sphere": ("sphere", "ball"), "cylinder": ("cylinder",), "cone": ("cone",),
               "pillar": ("pillar", "column"), "dome": ("dome",), "disc": ("disc", "disk"), "wedge": ("wedge", "ramp")}
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
FOV_DEG = 55.0
SPLIT_CODES = {"pool": 1, "curated": 2, "dense": 3, "val": 4, "dev": 5}
_EPS = 1e-4


def seg_classes(shapes: tuple[str, ...] = SHAPES) -> tuple[str, ...]:
    """A world's segmentation classes: background first, then its shapes (class id = index)."""
    return STUFF_CLASSES + tuple(shapes)


# ---------------------------------------------------------------------------------------------------
# Scene graph


@dataclass
class WorldObject:
    shape: str
    colour: str
    size: str
    x: float
    z: float
    yaw: float  # degrees about the vertical axis (cubes)

    @property
    def radius(self) -> float:
        return SIZES[self.size]


@dataclass
class Scene:
    objects: list[WorldObject]
    floor: str
    wall: str
    wall_z: float
    cam_height: float
    pitch: float  # radians, looking down
    light: np.ndarray  # unit vector towards the light
    brightness: float
    tile: float  # floor texture tile size (m)


def sample_scene(rng: np.random.Generator, min_objects: int, max_objects: int, colours: int = len(COLOURS),
                 shapes: tuple[str, ...] = SHAPES) -> Scene:
    """colours: objects take the first `colours` of COLOURS. Fewer colours make colour alone name a scene less
    often, so a caption's shapes must be seen to tell scenes apart. shapes: those objects are drawn from."""
    palette = list(COLOURS)[:colours]
    n = int(rng.integers(min_objects, max_objects + 1))
    objects: list[WorldObject] = []
    tries = 0
    while len(objects) < n and tries < 200:
        tries += 1
        size = str(rng.choice(list(SIZES)))
        r = SIZES[size]
        z = float(rng.uniform(2.4, 4.8))
        half_width = 0.36 * z  # keep the object inside the horizontal field of view
        x = float(rng.uniform(-half_width + r, half_width - r))
        if any(math.hypot(x - o.x, z - o.z) < r + o.radius + 0.15 for o in objects):
            continue
        x, z = round(x, 3), round(z, 3)  # stored at this precision in KEY.json: the record is exact
        objects.append(WorldObject(shape=str(rng.choice(shapes)), colour=str(rng.choice(palette)),
                                   size=size, x=x, z=z, yaw=round(float(rng.uniform(0, 90)), 3)))
    az, el = rng.uniform(-1.0, 1.0), rng.uniform(0.6, 1.1)
    light = np.array([math.sin(az) * math.cos(el), math.sin(el), -math.cos(az) * math.cos(el) * 0.6])
    return Scene(
        objects=objects,
        floor=str(rng.choice(list(FLOORS))),
        wall=str(rng.choice(list(WALLS))),
        wall_z=round(float(rng.uniform(8.0, 9.5)), 6),
        cam_height=round(float(rng.uniform(1.6, 2.0)), 6),
        pitch=math.radians(round(float(rng.uniform(20, 28)), 6)),
        light=light / np.linalg.norm(light),
        brightness=float(rng.uniform(0.85, 1.15)),
        tile=float(rng.uniform(0.5, 1.0)),
    )


# ---------------------------------------------------------------------------------------------------
# Ray casting: each function takes origins O (N,3) and unit directions D (N,3), returns t (N,) with inf
# where there is no hit, and unit normals (N,3).


def _hit_sphere(O, D, c, r):
    oc = O - c
    b = np.einsum("ij,ij->i", oc, D)
    cc = np.einsum("ij,ij->i", oc, oc) - r * r
    disc = b * b - cc
    ok = disc >= 0
    s = np.sqrt(np.where(ok, disc, 0))
    t = -b - s
    t = np.where(t > _EPS, t, -b + s)
    t = np.where(ok & (t > _EPS), t, np.inf)
    n = (O + t[:, None] * D - c) / r
    return t, n


def _object_frame(O, D, c, yaw):
    """Rays in the frame of an object at `c` turned by `yaw` about the vertical: (origins, directions, R), R the
    local -> world rotation (normals go back with `@ R.T`)."""
    cs, sn = math.cos(yaw), math.sin(yaw)
    R = np.array([[cs, 0, sn], [0, 1, 0], [-sn, 0, cs]])
    return (O - c) @ R, D @ R, R


def _hit_box(O, D, c, h, yaw):
    Ol, Dl, R = _object_frame(O, D, c, yaw)
    Dl = np.where(np.abs(Dl) < 1e-9, 1e-9, Dl)
    t1, t2 = (-h - Ol) / Dl, (h - Ol) / Dl
    tnear, tfar = np.minimum(t1, t2), np.maximum(t1, t2)
    tmin, tmax = tnear.max(1), tfar.min(1)
    ok = (tmax >= tmin) & (tmax > _EPS)
    t = np.where(tmin > _EPS, tmin, tmax)
    t = np.where(ok, t, np.inf)
    axis = tnear.argmax(1)
    nl = np.zeros_like(Ol)
    nl[np.arange(len(O)), axis] = -np.sign(Dl[np.arange(len(O)), axis])
    return t, nl @ R.T


def _nearest_root(O, D, a, b, c, height):
    """Nearest t > 0 of a t^2 + 2 b t + c = 0 per ray whose hit lies at 0 <= y <= height (a quadric's side);
    inf where there is none."""
    a_safe = np.where(np.abs(a) < 1e-12, 1e-12, a)  # a >= 0 for a cylinder: the same as a < 1e-12 there
    disc = b * b - a * c
    s = np.sqrt(np.where(disc >= 0, disc, 0))
    t = np.full(len(O), np.inf)
    for root in ((-b - s) / a_safe, (-b + s) / a_safe):
        y = O[:, 1] + root * D[:, 1]
        good = (disc >= 0) & (root > _EPS) & (y >= 0) & (y <= height)
        t = np.where(good & (root < t), root, t)
    return t


def _hit_cylinder(O, D, cx, cz, r, height):
    ox, oz = O[:, 0] - cx, O[:, 2] - cz
    a = D[:, 0] ** 2 + D[:, 2] ** 2
    b = ox * D[:, 0] + oz * D[:, 2]
    c = ox * ox + oz * oz - r * r
    t_side = _nearest_root(O, D, a, b, c, height)
    dy = np.where(np.abs(D[:, 1]) < 1e-12, 1e-12, D[:, 1])
    t_cap = (height - O[:, 1]) / dy
    px, pz = ox + t_cap * D[:, 0], oz + t_cap * D[:, 2]
    cap_ok = (t_cap > _EPS) & (px * px + pz * pz <= r * r)
    t_cap = np.where(cap_ok, t_cap, np.inf)
    t = np.minimum(t_side, t_cap)
    P = O + np.where(np.isfinite(t), t, 0)[:, None] * D
    n_side = np.stack([(P[:, 0] - cx) / r, np.zeros(len(O)), (P[:, 2] - cz) / r], 1)
    n = np.where((t_cap <= t_side)[:, None], np.array([0.0, 1.0, 0.0]), n_side)
    return t, n


def _hit_cone(O, D, cx, cz, r, height):
    k2 = (r / height) ** 2
    ox, oy, oz = O[:, 0] - cx, O[:, 1] - height, O[:, 2] - cz
    a = D[:, 0] ** 2 + D[:, 2] ** 2 - k2 * D[:, 1] ** 2
    b = ox * D[:, 0] + oz * D[:, 2] - k2 * oy * D[:, 1]
    c = ox * ox + oz * oz - k2 * oy * oy
    t = _nearest_root(O, D, a, b, c, height)
    P = O + np.where(np.isfinite(t), t, 0)[:, None] * D
    n = np.stack([P[:, 0] - cx, k2 * (height - P[:, 1]), P[:, 2] - cz], 1)
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    return t, n


def _hit_wedge(O, D, c, half_width, height, half_depth, yaw):
    """A triangular prism lying on the floor (a roof or ramp): |x| / half_width + y / height <= 1, y >= 0,
    |z| <= half_depth in its own frame; hit as the intersection of its five half-spaces."""
    Ol, Dl, R = _object_frame(O, D, c, yaw)
    planes = np.array([[1 / half_width, 1 / height, 0], [-1 / half_width, 1 / height, 0], [0, -1, 0],
                       [0, 0, 1], [0, 0, -1]])  # n . p <= d
    d = np.array([1.0, 1.0, 0.0, half_depth, half_depth])
    denom, num = Dl @ planes.T, d - Ol @ planes.T
    denom = np.where(np.abs(denom) < 1e-12, 1e-12, denom)
    t = num / denom
    t_in = np.where(denom < 0, t, -np.inf).max(1)
    t_out = np.where(denom > 0, t, np.inf).min(1)
    ok = (t_in <= t_out) & (t_out > _EPS)
    t_hit = np.where(ok, np.where(t_in > _EPS, t_in, t_out), np.inf)
    face = np.where(denom < 0, t, -np.inf).argmax(1)
    nl = planes[face] / np.linalg.norm(planes[face], axis=1, keepdims=True)
    return t_hit, nl @ R.T


def _hit_object(obj: WorldObject, O, D):
    r = obj.radius
    if obj.shape == "sphere":
        return _hit_sphere(O, D, np.array([obj.x, r, obj.z]), r)
    if obj.shape == "cube":
        h = 0.82 * r
        return _hit_box(O, D, np.array([obj.x, h, obj.z]), h, math.radians(obj.yaw))
    if obj.shape == "cylinder":
        return _hit_cylinder(O, D, obj.x, obj.z, 0.8 * r, 1.9 * r)
    if obj.shape == "cone":
        return _hit_cone(O, D, obj.x, obj.z, r, 2.3 * r)
    if obj.shape == "pillar":  # a tall square post
        h = np.array([0.45 * r, 1.5 * r, 0.45 * r])
        return _hit_box(O, D, np.array([obj.x, h[1], obj.z]), h, math.radians(obj.yaw))
    if obj.shape == "dome":  # a half sphere on the floor; its lower half lies under the floor, never seen
        t, n = _hit_sphere(O, D, np.array([obj.x, 0.0, obj.z]), 1.15 * r)
        above = O[:, 1] + np.where(np.isfinite(t), t, 0) * D[:, 1] >= -_EPS
        return np.where(above, t, np.inf), n
    if obj.shape == "disc":  # a low, wide cylinder
        return _hit_cylinder(O, D, obj.x, obj.z, 1.1 * r, 0.45 * r)
    if obj.shape == "wedge":
        return _hit_wedge(O, D, np.array([obj.x, 0.0, obj.z]), 1.0 * r, 1.1 * r, 0.7 * r, math.radians(obj.yaw))
    raise ValueError(f"unknown shape {obj.shape!r}; the world renders {list(ALL_SHAPES)}")


@dataclass
class Rendered:
    image: np.ndarray  # HxWx3 uint8
    seg: np.ndarray  # HxW uint8 class ids (SEG_CLASSES)
    depth: np.ndarray  # HxW float32 metres along the optical axis
    instance: np.ndarray  # HxW int16: object index, -1 for floor/wall


def render(scene: Scene, size: int, rng: np.random.Generator, classes: tuple[str, ...] = SEG_CLASSES) -> Rendered:
    """classes: the world's segmentation classes (`seg_classes`); an object's mask value is its shape's index."""
    S = size
    fov = math.radians(FOV_DEG)
    focal = (S / 2) / math.tan(fov / 2)
    p = scene.pitch
    fwd = np.array([0.0, -math.sin(p), math.cos(p)])
    up = np.array([0.0, math.cos(p), math.sin(p)])
    right = np.array([1.0, 0.0, 0.0])
    jj, ii = np.meshgrid(np.arange(S) + 0.5 - S / 2, np.arange(S) + 0.5 - S / 2)
    D = fwd + (jj.reshape(-1, 1) / focal) * right - (ii.reshape(-1, 1) / focal) * up
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    N = S * S
    O = np.tile(np.array([0.0, scene.cam_height, 0.0]), (N, 1))

    # floor (y = 0) and back wall (z = wall_z)
    t_floor = np.where(D[:, 1] < -1e-9, -scene.cam_height / np.minimum(D[:, 1], -1e-9), np.inf)
    t_wall = np.where(D[:, 2] > 1e-9, scene.wall_z / np.maximum(D[:, 2], 1e-9), np.inf)
    t = np.minimum(t_floor, t_wall)
    seg = np.where(t_floor <= t_wall, 0, 1).astype(np.uint8)
    normal = np.where((t_floor <= t_wall)[:, None], np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0]))
    inst = np.full(N, -1, dtype=np.int16)
    for k, obj in enumerate(scene.objects):
        tk, nk = _hit_object(obj, O, D)
        closer = tk < t
        t = np.where(closer, tk, t)
        seg[closer] = classes.index(obj.shape)
        inst[closer] = k
        normal[closer] = nk[closer]

    P = O + t[:, None] * D
    # base colour: textured floor, plain wall, object colours (slightly jittered per image)
    floor_rgb = np.array(FLOORS[scene.floor])
    checker = ((np.floor(P[:, 0] / scene.tile) + np.floor(P[:, 2] / scene.tile)) % 2) * 0.12 - 0.06
    base = np.where((seg == 0)[:, None], floor_rgb * (1 + checker[:, None]), np.array(WALLS[scene.wall]))
    for k, obj in enumerate(scene.objects):
        rgb = np.clip(np.array(COLOURS[obj.colour]) + rng.normal(0, 0.03, 3), 0, 1)
        base[inst == k] = rgb

    # Lambert shading with cast shadows from the objects
    L = scene.light
    lambert = np.clip(normal @ L, 0, 1)
    lit = lambert > 0
    shadow = np.zeros(N, dtype=bool)
    if scene.objects and lit.any():
        Os = P[lit] + normal[lit] * 1e-3
        Ds = np.broadcast_to(L, Os.shape)
        blocked = np.zeros(len(Os), dtype=bool)
        for obj in scene.objects:
            ts, _ = _hit_object(obj, Os, Ds)
            blocked |= np.isfinite(ts)
        shadow[lit] = blocked
    shade = 0.42 + 0.58 * lambert * (~shadow)
    rgb = base * shade[:, None] * scene.brightness
    rgb = rgb + rng.normal(0, 0.025, rgb.shape)
    image = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(S, S, 3)

    depth = (t * (D @ fwd)).astype(np.float32).reshape(S, S)
    return Rendered(image=image, seg=seg.reshape(S, S), depth=depth, instance=inst.reshape(S, S))


# ---------------------------------------------------------------------------------------------------
# Text: reference descriptions and web-like alt-text

MIN_VISIBLE_PIXELS = 40  # about 6x6 px at 64 px: smaller objects are not named (a person could not tell the shape)


def scene_record(scene: Scene, r: Rendered) -> dict:
    """The scene graph as stored in KEY.json, with what is visible and where in the image."""
    objs = []
    for k, o in enumerate(scene.objects):
        ys, xs = np.nonzero(r.instance == k)
        visible = len(xs) >= MIN_VISIBLE_PIXELS
        objs.append({
            "shape": o.shape, "colour": o.colour, "size": o.size,
            "x": o.x, "z": o.z, "yaw_deg": o.yaw,
            "pixels": int(len(xs)), "visible": bool(visible),
            "centroid": [round(float(xs.mean()), 2), round(float(ys.mean()), 2)] if len(xs) else None,
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None,
        })
    camera = {"height": round(scene.cam_height, 6), "pitch_deg": round(math.degrees(scene.pitch), 6),
              "fov_deg": FOV_DEG, "wall_z": round(scene.wall_z, 6)}
    return {"objects": objs, "floor": scene.floor, "wall": scene.wall, "camera": camera}


def _word(words: tuple[str, ...], rng: np.random.Generator) -> str:
    """The first (usual) word 70% of the time, a synonym otherwise: people have a word they mostly use, and
    a captioner trained on uniformly spread synonyms would, when unsure, prefer a shape that has no synonym."""
    if len(words) == 1 or rng.random() < 0.7:
        return words[0]
    return str(rng.choice(words[1:]))


def _noun_phrase(o: dict, rng: np.random.Generator, article: bool = True) -> str:
    size = _word(SIZE_WORDS[o["size"]], rng)
    noun = _word(SHAPE_WORDS[o["shape"]], rng)
    words = [size, o["colour"], noun] if rng.random() < 0.8 else [o["colour"], noun, "that is " + size]
    phrase = " ".join(words)
    if not article:
        return phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


_NUM = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


def describe(record: dict, rng: np.random.Generator) -> str:
    """One reference description: names every visible object, with correct relations and varied phrasing."""
    objs = [o for o in record["objects"] if o["visible"]]
    floor = record["floor"]
    if not objs:
        return f"An empty {floor} floor in front of a {record['wall']} wall."
    by_x = sorted(objs, key=lambda o: o["centroid"][0])
    phrases = [_noun_phrase(o, rng) for o in by_x]
    style = int(rng.integers(0, 5))
    if style == 0:
        text = f"{_join(phrases).capitalize()} on a {floor} floor, from left to right."
    elif style == 1:
        text = f"There are {_NUM[len(objs)]} objects: {_join(phrases)}."
        text = text if len(objs) > 1 else f"There is one object: {phrases[0]}."
    elif style == 2 and len(objs) >= 2:
        a, b = rng.choice(len(by_x), size=2, replace=False)
        a, b = int(min(a, b)), int(max(a, b))
        rel = f"{phrases[a].capitalize()} is to the left of {phrases[b]}"
        rest = [p for i, p in enumerate(phrases) if i not in (a, b)]
        text = rel + (f", and there is also {_join(rest)}." if rest else ".")
    elif style == 3 and len(objs) >= 2:
        by_z = sorted(objs, key=lambda o: o["z"])
        front, back = by_z[0], by_z[-1]
        text = (f"{_noun_phrase(front, rng).capitalize()} in front of {_noun_phrase(back, rng)}"
                f" on a {floor} floor.")
        others = [o for o in objs if o is not front and o is not back]
        if others:
            text = text[:-1] + f", with {_join([_noun_phrase(o, rng) for o in others])} nearby."
    else:
        text = f"A photo of {_join(phrases)} in front of a {record['wall']} wall."
    return text


_BOILERPLATE = ("click to enlarge", "image", "untitled", "stock photo", "free download hd wallpaper",
                "product image 1 of 4", "see more", "thumbnail", "3d render", "photo", "new arrivals",
                "best price guaranteed", "high resolution picture", "sample image")
_FILE_STEMS = ("IMG_", "DSC", "render_", "scene", "final_v", "Untitled-", "photo_")


def context_alt_text(record: dict, rng: np.random.Generator) -> str:
    """Alt-text about the setting, not the objects ("3d render, gray floor and blue wall"): relevant to the
    picture, a strong cue for telling scenes apart, and silent on shapes."""
    floor, wall = f"{record['floor']} floor", f"{record['wall']} wall"
    core = str(rng.choice([f"{floor} and {wall}", f"{wall}, {floor}", f"room with a {wall}", f"{floor}"],
                          p=[0.4, 0.2, 0.2, 0.2]))
    core = str(rng.choice([core, f"3d render, {core}", f"empty {core}"], p=[0.6, 0.3, 0.1]))
    return f"{core} {rng.choice(_BOILERPLATE)}" if rng.random() < 0.25 else core


def alt_text(record: dict, rng: np.random.Generator, relevance: float, context: float = 0.0,
             context_rng: np.random.Generator | None = None, unnamed: tuple[str, ...] = (),
             shapes: tuple[str, ...] = SHAPES) -> tuple[str, str]:
    """Web-like alt-text and its kind (partial, context, boilerplate, filename, wrong, empty). `context`: the
    share of relevant alt-text that names the setting instead of the objects, drawn from `context_rng` so that
    `rng`'s stream (and every later draw of the sample from it) is the same at any `context`. `unnamed`: shapes
    alt-text never names (not even wrongly); the reference descriptions still do. `shapes`: the world's (what
    wrong alt-text names)."""
    if context > 0 and context_rng is None:
        raise ValueError("alt_text: a context share needs its own context_rng (drawing it from rng would change "
                         "every later draw of the sample)")
    objs = [o for o in record["objects"] if o["visible"] and o["shape"] not in unnamed]
    if objs and rng.random() < relevance:
        # like real alt-text about the picture: the main subject (the biggest object), sometimes a second
        # one, often with a wrong attribute and page boilerplate around it
        by_size = sorted(objs, key=lambda o: -o["pixels"])
        chosen = by_size[:1]
        if len(by_size) > 1 and rng.random() < 0.5:
            chosen.append(by_size[1 + int(rng.integers(len(by_size) - 1))])
        phrases = []
        for o in chosen:
            colour = o["colour"]
            if rng.random() < 0.2:  # partly right: a wrong colour
                colour = str(rng.choice([c for c in COLOURS if c != o["colour"]]))
            noun = str(rng.choice(SHAPE_WORDS[o["shape"]]))
            words = [colour, noun] if rng.random() < 0.8 else [noun]
            if rng.random() < 0.3:
                words.insert(0, o["size"])
            phrases.append(" ".join(words))
        core = " and ".join(phrases)
        core = str(rng.choice([core, f"{core} 3d render", f"3d {core}", f"{core} on {record['floor']} floor"],
                              p=[0.7, 0.1, 0.1, 0.1]))
        junk = str(rng.choice(_BOILERPLATE))
        text = f"{core} {junk}" if rng.random() < 0.25 else core
        if context > 0 and context_rng.random() < context:
            return context_alt_text(record, context_rng), "context"
        return text, "partial"
    kind = str(rng.choice(["boilerplate", "filename", "wrong", "empty"], p=[0.35, 0.25, 0.25, 0.15]))
    if kind == "boilerplate":
        return str(rng.choice(_BOILERPLATE)), kind
    if kind == "filename":
        ext = str(rng.choice([".jpg", ".png", ".JPG"]))
        return f"{rng.choice(_FILE_STEMS)}{int(rng.integers(0, 10000)):04d}{ext}", kind
    if kind == "wrong":
        present = {(o["shape"], o["colour"]) for o in record["objects"]}  # hidden ones too: "wrong" is wrong
        while True:
            shape, colour = str(rng.choice([s for s in shapes if s not in unnamed])), str(rng.choice(list(COLOURS)))
            if (shape, colour) not in present:
                break
        return f"{colour} {rng.choice(SHAPE_WORDS[shape])} {rng.choice(_BOILERPLATE)}", kind
    return "", kind


# ---------------------------------------------------------------------------------------------------
# Samples


@dataclass(frozen=True)
class WorldSpec:
    """What determines a split's samples (hashable, picklable for worker processes)."""

    seed: int
    split: str
    image_size: int
    min_objects: int
    max_objects: int
    alt_text_relevance: float
    descriptions_per_image: int
    image_format: str
    with_reference: bool
    with_dense: bool
    colours: int = len(COLOURS)
    alt_text_context: float = 0.0
    alt_text_unnamed: tuple[str, ...] = ()
    shapes: tuple[str, ...] = SHAPES


def make_sample(spec: WorldSpec, index: int) -> Sample:
    rng = np.random.default_rng([spec.seed, SPLIT_CODES[spec.split], index])
    scene = sample_scene(rng, spec.min_objects, spec.max_objects, spec.colours, spec.shapes)
    r = render(scene, spec.image_size, rng, seg_classes(spec.shapes))
    record = scene_record(scene, r)
    context_rng = np.random.default_rng([spec.seed, SPLIT_CODES[spec.split], index, 1])
    raw, kind = alt_text(record, rng, spec.alt_text_relevance, spec.alt_text_context, context_rng,
                         spec.alt_text_unnamed, spec.shapes)
    captions = {"raw": [raw] if raw else [], "reference": [], "synthetic": {}}
    if spec.with_reference:
        captions["reference"] = [describe(record, rng) for _ in range(spec.descriptions_per_image)]
    key = f"{spec.split}-{index:07d}"
    enc = encode_png if spec.image_format == "png" else encode_jpg
    return Sample(
        key=key, image=enc(r.image), image_ext=spec.image_format,
        meta={"captions": captions, "scores": {}, "source": "world", "split": spec.split,
              "width": spec.image_size, "height": spec.image_size, "alt_text_kind": kind, "scene": record},
        seg=r.seg if spec.with_dense else None,
        depth=r.depth if spec.with_dense else None,
    )
