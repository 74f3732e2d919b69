"""Procedural abdominal-ultrasound-like B-mode images with view labels, landmarks and a "human" annotation.

What it imitates (methods.md §3, Xu et al. MICCAI 2018): a curvilinear-probe sector fan (apex above the top
row, ±30°, the near field cut off), one organ per view drawn as a smooth random shape (ellipse, kidney
bean, rounded bladder) with a bright capsule, internal structure (the kidney's bright central sinus, dark
liver vessels, an anechoic bladder with posterior enhancement), a secondary structure in two views (the
kidney beneath the liver or the spleen), bright reflectors (gas, rib edges) casting acoustic shadows along
their rays, an imperfect depth gain, speckle (a complex Gaussian field blurred by an anisotropic point spread
function: a spatially correlated Rayleigh envelope, multiplicative on the echogenicity) and log compression
to a 40 dB display range. 11 view classes (`VIEWS`): organ x orientation (+ the secondary kidney) + "others".
Landmarks are organ poles and width endpoints; each pair defines a length measurement (`MEASUREMENTS`) in mm
through the per-image pixel spacing (the field depth, 140-200 mm, over the fan's depth in pixels). There are
`L = len(CHANNELS)` landmark channels over all views; a view supervises only its own (`VIEW_CHANNELS`, the
per-sample `landmark_mask`).

The "human" annotation: the true landmarks moved by `HUMAN_TANGENT_SIGMA_PX` along the organ boundary and
`HUMAN_NORMAL_SIGMA_PX` across it (annotators slide along an edge more than they miss it), and a human view
label that names the similar view `HUMAN_PARTNER[view]` with probability `HUMAN_CONFUSION` and any other
view with probability `HUMAN_SLIP`. These rates are chosen, not measured: they put the human view agreement
near the talk's 78.87 %, so the "human" rows of a table are set by construction.

What it does not imitate: real anatomy, organ textures, beam physics (no wave propagation, no reverberation,
side lobes, refraction or harmonic imaging), real annotator behaviour, or the paper's 187,219 images. It
exercises multitask models, masking and metrics, not clinical claims.

    data = ultrasound_views("train", 512, size=64, seed=0)    # ArrayDataset, see `ultrasound_views`
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from kfjax.data.pipeline import ArrayDataset
from kfjax.errors import InputError

VIEWS = ("kidney_long", "kidney_trans", "spleen_long", "spleen_trans", "liver_long", "liver_trans",
         "bladder_long", "bladder_trans", "liver_long_kidney", "spleen_long_kidney", "others")
CHANNELS = ("kidney_pole_a", "kidney_pole_b", "kidney_width_a", "kidney_width_b", "kidney_trans_width_a",
            "kidney_trans_width_b", "spleen_pole_a", "spleen_pole_b", "liver_pole_a", "liver_pole_b",
            "bladder_width_a", "bladder_width_b")
# (name, channel a, channel b): the length between two landmarks
MEASUREMENTS = (("kidney length", 0, 1), ("kidney width", 2, 3), ("kidney transverse width", 4, 5),
                ("spleen length", 6, 7), ("liver length", 8, 9), ("bladder width", 10, 11))
VIEW_CHANNELS = {"kidney_long": (0, 1, 2, 3), "kidney_trans": (4, 5), "spleen_long": (6, 7), "liver_long": (8, 9),
                 "bladder_trans": (10, 11), "liver_long_kidney": (8, 9), "spleen_long_kidney": (6, 7)}
HUMAN_PARTNER = {"kidney_long": "kidney_trans", "kidney_trans": "kidney_long", "spleen_long": "spleen_long_kidney",
                 "spleen_trans": "spleen_long", "liver_long": "liver_long_kidney", "liver_trans": "others",
                 "bladder_long": "bladder_trans", "bladder_trans": "bladder_long",
                 "liver_long_kidney": "liver_long", "spleen_long_kidney": "spleen_long", "others": "liver_trans"}
HUMAN_CONFUSION = 0.18  # probability that the human names the similar view HUMAN_PARTNER[view]
HUMAN_SLIP = 0.03  # probability that the human names a uniformly random other view
HUMAN_TANGENT_SIGMA_PX = 2.0  # human landmark noise along the organ boundary (pixels)
HUMAN_NORMAL_SIGMA_PX = 0.75  # human landmark noise across the organ boundary (pixels)
FAN_HALF_ANGLE = np.deg2rad(30.0)  # sector half opening (radians)
APEX_ABOVE = 0.08  # the apex lies this fraction of the image side above the top row
NEAR_FIELD = 0.12  # the fan starts this fraction of the image side below the apex
DEPTH_MM = (140.0, 200.0)  # range of the field depth (mm): sets the pixel spacing of each image
DYNAMIC_RANGE_DB = 40.0  # log-compression display range
PSF_SIGMA_PX = (0.6, 1.0)  # point spread function (axial, lateral) sigma in pixels: speckle grain
COMPOUND = 3  # independent speckle looks averaged (spatial compounding): lowers the speckle variance
SPLITS = {"train": 0, "val": 1, "test": 2}

# organ -> (semi-axis a range as a fraction of the side, b/a range, bean indentation, shape exponent)
_SHAPES = {"kidney_long": ((0.2, 0.25), (0.42, 0.52), 0.22, 2.0), "kidney_trans": ((0.13, 0.17), (0.75, 0.9), 0.35, 2.0),
           "spleen_long": ((0.21, 0.27), (0.35, 0.45), 0.12, 2.0), "spleen_trans": ((0.14, 0.18), (0.55, 0.7), 0.1, 2.0),
           "liver_long": ((0.26, 0.32), (0.5, 0.62), 0.0, 2.0), "liver_trans": ((0.27, 0.33), (0.8, 0.95), 0.0, 2.0),
           "bladder_long": ((0.2, 0.25), (0.5, 0.62), 0.0, 4.0), "bladder_trans": ((0.16, 0.21), (0.75, 0.9), 0.0, 4.0)}
_LEVELS = {"kidney": 0.07, "spleen": 0.8, "liver": 0.55, "bladder": 0.005, "blob": 0.06}  # mean echogenicity inside the organ


class _Organ:
    """A smooth closed shape: centre (row, col), semi-axes a (along angle phi) and b, radial wobble, an
    indentation (bean hilum) at theta = hilum, superellipse exponent p. Coordinates in pixels."""

    def __init__(self, rng, centre, a, b, phi, indent, power):
        self.centre, self.a, self.b, self.phi, self.indent, self.power = np.asarray(centre, float), a, b, phi, indent, power
        self.hilum = rng.choice([np.pi / 2, -np.pi / 2])
        self.coef = rng.normal(0.0, 0.03, (3, 2))  # Fourier wobble of orders 2..4

    def rho(self, theta):
        """Relative radius of the boundary at organ-frame angle theta."""
        k = np.arange(2, 5).reshape((3,) + (1,) * np.ndim(theta))
        r = 1.0 + np.sum(self.coef[:, :1].reshape(k.shape) * np.cos(k * theta) +
                         self.coef[:, 1:].reshape(k.shape) * np.sin(k * theta), axis=0)
        return r - self.indent * np.exp(-(np.angle(np.exp(1j * (theta - self.hilum))) ** 2) / 0.25)

    def _frame(self, rows, cols):
        dr, dc = rows - self.centre[0], cols - self.centre[1]
        u = dc * np.cos(self.phi) + dr * np.sin(self.phi)  # along the major axis
        v = -dc * np.sin(self.phi) + dr * np.cos(self.phi)
        return u / self.a, v / self.b

    def level(self, rows, cols):
        """s / rho(theta): < 1 inside, 1 on the boundary."""
        x, y = self._frame(rows, cols)
        s = (np.abs(x) ** self.power + np.abs(y) ** self.power) ** (1.0 / self.power)
        return s / self.rho(np.arctan2(y, x))

    def point(self, theta):
        """(row, col) of the boundary point at organ-frame angle theta (scalar or array)."""
        c, s = np.cos(theta), np.sin(theta)
        norm = (np.abs(c) ** self.power + np.abs(s) ** self.power) ** (1.0 / self.power)
        u, v = self.a * self.rho(theta) * c / norm, self.b * self.rho(theta) * s / norm
        return np.stack([self.centre[0] + u * np.sin(self.phi) + v * np.cos(self.phi),
                         self.centre[1] + u * np.cos(self.phi) - v * np.sin(self.phi)], axis=-1)


def _fan(size: int):
    """(apex row, apex col, deepest range) in pixels and (angle (S,S), range (S,S), fan mask (S,S) bool)."""
    apex = (-APEX_ABOVE * size, (size - 1) / 2.0)
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    rng_px = np.hypot(rows - apex[0], cols - apex[1])
    angle = np.arctan2(cols - apex[1], rows - apex[0])
    r_max = (size - 1) - apex[0]
    mask = (np.abs(angle) <= FAN_HALF_ANGLE) & (rng_px >= NEAR_FIELD * size) & (rng_px <= r_max)
    return apex, r_max, angle, rng_px, mask


def in_fan(points: np.ndarray, size: int, margin: float = 0.0) -> np.ndarray:
    """Whether (row, col) points `(..., 2)` lie inside the fan of a `size` image by `margin` pixels: `(...)` bool."""
    apex, r_max, *_ = _fan(size)
    r = np.hypot(points[..., 0] - apex[0], points[..., 1] - apex[1])
    angle = np.arctan2(points[..., 1] - apex[1], points[..., 0] - apex[0])
    inside = (r >= NEAR_FIELD * size + margin) & (r <= r_max - margin) & (np.abs(angle) * r <= FAN_HALF_ANGLE * r - margin)
    return inside & (points[..., 0] >= margin) & (points[..., 0] <= size - 1 - margin) & \
        (points[..., 1] >= margin) & (points[..., 1] <= size - 1 - margin)


def _place(rng, name: str, size: int, scale: float = 1.0, centre=None) -> _Organ:
    """An organ of kind `name` whose landmark points all lie inside the fan (rejection sampling)."""
    (a_lo, a_hi), (q_lo, q_hi), indent, power = _SHAPES[name]
    for attempt in range(200):
        shrink = scale * (1.0 - 0.002 * attempt)
        a = rng.uniform(a_lo, a_hi) * size * shrink
        b = a * rng.uniform(q_lo, q_hi)
        c = centre if centre is not None else (rng.uniform(0.4, 0.7) * size, rng.uniform(0.35, 0.65) * size)
        organ = _Organ(rng, c, a, b, rng.uniform(-0.4, 0.4), indent, power)
        if centre is not None or in_fan(_landmarks(organ), size, margin=2.0).all():
            return organ
    raise RuntimeError(f"could not place a {name} inside a {size}-pixel fan")


def _landmarks(organ: _Organ) -> np.ndarray:
    """(4, 2): the poles (theta 0, pi), then the width endpoints (theta +-pi/2)."""
    return organ.point(np.array([0.0, np.pi, np.pi / 2, -np.pi / 2]))


def _behind(level_fn, apex, angle: np.ndarray, r_px: np.ndarray) -> np.ndarray:
    """Pixels (angle, range maps `(S, S)`) whose ray from the apex crossed the shape `level_fn(rows, cols) < 1`
    before reaching them: the shape is sampled on a polar grid of 2S angles x 2S ranges, ORed along range."""
    n = 2 * angle.shape[0]
    angles = np.linspace(-1.2 * FAN_HALF_ANGLE, 1.2 * FAN_HALF_ANGLE, n)
    ranges = np.linspace(0.0, r_px.max(), n)
    a, r = np.meshgrid(angles, ranges, indexing="ij")
    crossed = np.logical_or.accumulate(level_fn(apex[0] + r * np.cos(a), apex[1] + r * np.sin(a)) < 1.0, axis=1)
    ai = np.clip(np.rint((angle - angles[0]) / (angles[1] - angles[0])), 0, n - 1).astype(int)
    ri = np.clip(np.rint(r_px / (ranges[1] - ranges[0])), 0, n - 1).astype(int)
    rows, cols = apex[0] + r_px * np.cos(angle), apex[1] + r_px * np.sin(angle)
    return crossed[ai, ri] & (level_fn(rows, cols) >= 1.0)


def _render(rng: np.random.Generator, view: str, size: int):
    """One image `(S, S)` in [0, 1], landmarks `(L, 2)`, mask `(L,)`, spacing (mm/px), tangents `(L, 2)`."""
    apex, r_max, angle, r_px, fan = _fan(size)
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    smooth = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 10.0)
    smooth = smooth / (np.abs(smooth).max() + 1e-8)
    echo = 0.3 * (1.0 + 0.3 * smooth)  # background tissue
    landmarks, mask, tangents = np.zeros((len(CHANNELS), 2)), np.zeros(len(CHANNELS)), np.zeros((len(CHANNELS), 2))
    shapes = []
    if view != "others":
        kind = view.removesuffix("_kidney")
        organ = _place(rng, kind, size)
        shapes.append((kind.split("_")[0], organ))
        if view.endswith("_kidney"):  # the kidney deep to the liver / spleen, partly overlapped
            depth = organ.centre + np.array([organ.b * rng.uniform(0.7, 1.0), rng.uniform(-0.3, 0.3) * organ.a])
            depth[0] = min(depth[0], 0.85 * size)  # keep the kidney's centre in the field
            shapes.append(("kidney", _place(rng, "kidney_long", size, rng.uniform(0.6, 0.85), centre=depth)))
        channels = VIEW_CHANNELS.get(view, ())
        if channels:
            thetas = np.array([0.0, np.pi, np.pi / 2, -np.pi / 2][:len(channels)])
            pts = organ.point(thetas)
            tang = organ.point(thetas + 1e-3) - pts
            for pair in range(len(channels) // 2):
                i, j = 2 * pair, 2 * pair + 1
                axis = 1 if pair == 0 else 0  # poles ordered by column, widths by row
                if pts[i, axis] > pts[j, axis]:
                    pts[[i, j]], tang[[i, j]] = pts[[j, i]], tang[[j, i]]
            landmarks[list(channels)] = pts
            tangents[list(channels)] = tang / np.linalg.norm(tang, axis=-1, keepdims=True)
            mask[list(channels)] = 1.0
    else:  # bowel-like hypoechoic blobs, no organ of interest
        for _ in range(rng.integers(2, 4)):
            blob = _Organ(rng, (rng.uniform(0.3, 0.8) * size, rng.uniform(0.3, 0.7) * size),
                          rng.uniform(0.05, 0.12) * size, rng.uniform(0.04, 0.08) * size, rng.uniform(-1, 1), 0.0, 2.0)
            shapes.append(("blob", blob))
    for kind, organ in shapes:
        lev = organ.level(rows, cols)
        inside = lev < 1.0
        echo = np.where(inside, _LEVELS[kind] * (1.0 + 0.2 * smooth), echo)
        if kind == "kidney":  # bright central sinus
            echo = np.where(lev < 0.45, 1.2, echo)
        if kind == "liver":  # dark vessels
            for _ in range(rng.integers(2, 5)):
                vc = organ.centre + rng.uniform(-0.5, 0.5, 2) * organ.b
                echo = np.where(np.hypot(rows - vc[0], cols - vc[1]) < rng.uniform(1.0, 2.5) * size / 64, 0.01, echo)
        if kind == "bladder":  # posterior acoustic enhancement
            echo = np.where(_behind(organ.level, apex, angle, r_px), echo * 1.8, echo)
        echo = np.where(np.abs(lev - 1.0) < 0.07, 1.5, echo)  # capsule
    for _ in range(rng.poisson(1.2)):  # bright reflectors with acoustic shadows
        centre = (rng.uniform(0.2, 0.8) * size, rng.uniform(0.25, 0.75) * size)
        spot = _Organ(rng, centre, rng.uniform(1.0, 2.5) * size / 64, 1.0 * size / 64, 0.0, 0.0, 2.0)
        echo = np.where(_behind(spot.level, apex, angle, r_px), echo * 0.12, echo)
        echo = np.where(spot.level(rows, cols) < 1.0, 3.0, echo)
    gain = np.exp(rng.uniform(-1.0, 0.2) * r_px / r_max)  # imperfect time-gain compensation
    envelope = np.sqrt(np.maximum(echo, 1e-4) * gain) * _speckle(rng, size)  # multiplicative
    reference = np.percentile(envelope[fan], 99.0)
    db = 20.0 * np.log10(np.maximum(envelope, 1e-6) / reference)
    image = np.clip(1.0 + db / DYNAMIC_RANGE_DB, 0.0, 1.0) * fan
    spacing = rng.uniform(*DEPTH_MM) / r_max
    return image.astype(np.float32), landmarks, mask, spacing, tangents


def _speckle(rng: np.random.Generator, size: int) -> np.ndarray:
    """Mean of COMPOUND independent Rayleigh envelopes, each |complex Gaussian field * PSF|, unit mean square."""
    total = np.zeros((size, size))
    for _ in range(COMPOUND):
        field = (ndimage.gaussian_filter(rng.standard_normal((size, size)), PSF_SIGMA_PX) +
                 1j * ndimage.gaussian_filter(rng.standard_normal((size, size)), PSF_SIGMA_PX))
        total += np.abs(field) / np.sqrt(np.mean(np.abs(field) ** 2))
    return total / COMPOUND


def _check(split: str, n: int, size: int) -> None:
    if split not in SPLITS:
        raise InputError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n must be a positive number of images, got {n!r}")
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise InputError(f"size must be an integer of at least 32 pixels, got {size!r}")


def ultrasound_views(split: str, n: int, size: int = 64, seed: int = 0) -> ArrayDataset:
    """`n` simulated B-mode images of a split; views balanced (each of the 11 about n / 11 times), shuffled.

    Returns an ArrayDataset of: image `(N, S, S, 1)` float32 in [0, 1] (0 outside the fan); view `(N,)` int32
    (index into VIEWS); landmarks `(N, L, 2)` float32 (row, col) pixels, 0 where unsupervised; landmark_mask
    `(N, L)` float32 (1: a landmark of this view); spacing `(N, 2)` float32 mm per pixel (rows, cols; isotropic);
    human_view `(N,)` int32; human_landmarks `(N, L, 2)` float32. Splits draw from disjoint streams
    (seed, split, index), so each image depends only on those three numbers.
    """
    _check(split, n, size)
    return ArrayDataset(**_generate(split, int(n), int(size), int(seed)))


@functools.lru_cache(maxsize=8)
def _generate(split: str, n: int, size: int, seed: int) -> dict[str, np.ndarray]:
    """The arrays of `ultrasound_views`, read-only and cached (about 25 ms per 64² image to simulate)."""
    code = SPLITS[split]
    order = np.random.default_rng((seed, code, 1 << 20)).permutation(np.arange(n) % len(VIEWS))
    L = len(CHANNELS)
    out = {"image": np.zeros((n, size, size, 1), np.float32), "view": order.astype(np.int32),
           "landmarks": np.zeros((n, L, 2), np.float32), "landmark_mask": np.zeros((n, L), np.float32),
           "spacing": np.zeros((n, 2), np.float32), "human_view": np.zeros(n, np.int32),
           "human_landmarks": np.zeros((n, L, 2), np.float32)}
    for i, view in enumerate(order):
        rng = np.random.default_rng((seed, code, i))
        image, lm, mask, spacing, tangents = _render(rng, VIEWS[view], size)
        normals = np.stack([-tangents[:, 1], tangents[:, 0]], axis=-1)
        noise = (rng.normal(0, HUMAN_TANGENT_SIGMA_PX, (L, 1)) * tangents +
                 rng.normal(0, HUMAN_NORMAL_SIGMA_PX, (L, 1)) * normals)
        out["image"][i, ..., 0] = image
        out["landmarks"][i], out["landmark_mask"][i], out["spacing"][i] = lm, mask, spacing
        out["human_landmarks"][i] = lm + noise * mask[:, None]
        out["human_view"][i] = _human_view(rng, int(view))
    for array in out.values():
        array.flags.writeable = False
    return out


def _human_view(rng: np.random.Generator, view: int) -> int:
    """The human's view label: the similar view, a random other view, or the true one."""
    u = rng.uniform()
    if u < HUMAN_CONFUSION:
        return VIEWS.index(HUMAN_PARTNER[VIEWS[view]])
    if u < HUMAN_CONFUSION + HUMAN_SLIP:
        return int(rng.choice([v for v in range(len(VIEWS)) if v != view]))
    return view


def view_channel_mask() -> np.ndarray:
    """`(n_views, L)` float32: 1 where a view supervises a landmark channel."""
    table = np.zeros((len(VIEWS), len(CHANNELS)), np.float32)
    for name, channels in VIEW_CHANNELS.items():
        table[VIEWS.index(name), list(channels)] = 1.0
    return table


def measurement_pairs() -> np.ndarray:
    """`(P, 2)` int32 channel indices of the landmark pairs of `MEASUREMENTS`."""
    return np.asarray([(a, b) for _, a, b in MEASUREMENTS], np.int32)
