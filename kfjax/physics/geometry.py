"""2-D CT acquisition geometries: parallel beam and fan beam (flat or arc detector).

Conventions (every projector, FBP and converter in kfjax follows them):

- World frame in mm, x to the right, y up. The image `(H, W)` is centred on the rotation axis: pixel
  (row i, column j) has its centre at x = (j - (W-1)/2)·s, y = ((H-1)/2 - i)·s, s = `pixel_size`. Row 0 is at
  the top (largest y), as an image is displayed.
- View angle θ (radians) increases counter-clockwise in that frame; view v has θ_v = start_angle +
  v·angle_range/n_views.
- Detector axis u(θ) = (cos θ, sin θ), central ray direction r(θ) = (-sin θ, cos θ): at θ = 0 the rays go
  up the image (+y) and the detector coordinate runs left to right, so a θ = 0 projection is the column sum.
- Parallel beam: bin d sits at t_d = (d - (n_det-1)/2)·det_spacing + det_offset (mm) along u; the sinogram
  value is the line integral of μ along the ray through t_d·u with direction r(θ).
- Fan beam: the source sits at -source_distance·r(β) (β = the view angle), the detector centre at
  +detector_distance·r(β). A ray leaves the source at fan angle γ, direction cos γ·r(β) + sin γ·u(β), so
  positive γ points toward +u. Arc (equiangular) detector: γ_d = (d - (n_det-1)/2)·det_spacing + det_offset,
  both in radians. Flat detector: t_d as for parallel beam (mm, on a line at source-to-detector distance
  D_sd), γ_d = atan(t_d / D_sd). The fan ray (β, γ) is the parallel ray θ = β - γ, t = source_distance·sin γ.
- Sinogram values are line integrals in the units of μ·mm (μ in 1/mm gives dimensionless values).

Converters to ASTRA `parallel_vec`/`fanflat_vec` and scikit-image `radon` conventions live in
`kfjax.physics.conventions`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from kfjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ParallelBeam:
    """Parallel-beam geometry. Lengths in mm, angles in radians."""

    n_views: int = 180  # projection angles, uniformly over angle_range
    n_det: int = 367  # detector bins
    det_spacing: float = 1.0  # bin width (mm)
    image_shape: tuple[int, int] = (256, 256)  # (H, W) pixels
    pixel_size: float = 1.0  # image pixel size (mm)
    angle_range: float = math.pi  # pi (180°) or 2*pi (360°)
    start_angle: float = 0.0  # θ of the first view
    det_offset: float = 0.0  # shift of the detector centre along u (mm)

    def __post_init__(self):
        _check_common(self)

    @property
    def kind(self) -> str:
        return "parallel"

    def angles(self) -> np.ndarray:
        """View angles θ_v, shape `(n_views,)`, radians."""
        return self.start_angle + np.arange(self.n_views) * (self.angle_range / self.n_views)

    def bins(self) -> np.ndarray:
        """Detector coordinates t_d, shape `(n_det,)`, mm."""
        return (np.arange(self.n_det) - (self.n_det - 1) / 2) * self.det_spacing + self.det_offset


@dataclasses.dataclass(frozen=True)
class FanBeam:
    """Fan-beam geometry with a flat or arc (equiangular) detector. Lengths in mm, angles in radians.

    `det_spacing` and `det_offset` are mm for `detector="flat"` and radians for `detector="arc"`.
    """

    n_views: int = 360
    n_det: int = 367
    source_distance: float = 512.0  # source to rotation centre (mm)
    detector_distance: float = 256.0  # rotation centre to detector centre (mm)
    det_spacing: float = 1.5  # bin width: mm (flat) or radians (arc)
    detector: str = "flat"  # "flat" or "arc"
    image_shape: tuple[int, int] = (256, 256)
    pixel_size: float = 1.0
    angle_range: float = 2 * math.pi
    start_angle: float = 0.0
    det_offset: float = 0.0  # mm (flat) or radians (arc)

    def __post_init__(self):
        _check_common(self)
        if self.detector not in ("flat", "arc"):
            raise ConfigError(f"FanBeam.detector must be 'flat' or 'arc', got {self.detector!r}")
        if self.source_distance <= 0 or self.detector_distance < 0:
            raise ConfigError("FanBeam distances must be positive (source_distance > 0, detector_distance >= 0)")
        if self.source_distance <= self.fov_radius():
            raise ConfigError(
                f"FanBeam source_distance {self.source_distance} mm lies inside the image "
                f"(half-diagonal {self.fov_radius():.1f} mm): move the source out or shrink the image"
            )

    @property
    def kind(self) -> str:
        return "fan-" + self.detector

    @property
    def source_detector_distance(self) -> float:
        return self.source_distance + self.detector_distance

    def angles(self) -> np.ndarray:
        """Source angles β_v, shape `(n_views,)`, radians."""
        return self.start_angle + np.arange(self.n_views) * (self.angle_range / self.n_views)

    def bins(self) -> np.ndarray:
        """Detector coordinates: t_d in mm (flat) or γ_d in radians (arc), shape `(n_det,)`."""
        return (np.arange(self.n_det) - (self.n_det - 1) / 2) * self.det_spacing + self.det_offset

    def fan_angles(self) -> np.ndarray:
        """Fan angle γ_d of every bin, shape `(n_det,)`, radians."""
        if self.detector == "arc":
            return self.bins()
        return np.arctan(self.bins() / self.source_detector_distance)

    def fov_radius(self) -> float:
        """Half-diagonal of the image (mm)."""
        h, w = self.image_shape
        return 0.5 * math.hypot(h, w) * self.pixel_size


def _check_common(g) -> None:
    name = type(g).__name__
    if len(g.image_shape) != 2 or min(g.image_shape) < 1:
        raise ConfigError(f"{name}.image_shape must be (H, W) with H, W >= 1, got {g.image_shape}")
    for field in ("n_views", "n_det"):
        if int(getattr(g, field)) < 1:
            raise ConfigError(f"{name}.{field} must be >= 1, got {getattr(g, field)}")
    for field in ("det_spacing", "pixel_size", "angle_range"):
        if not float(getattr(g, field)) > 0:
            raise ConfigError(f"{name}.{field} must be > 0, got {getattr(g, field)}")
    object.__setattr__(g, "image_shape", tuple(int(n) for n in g.image_shape))


Geometry = ParallelBeam | FanBeam


def preset(name: str, pixel_size: float | None = None) -> FanBeam:
    """The fan-beam geometries of the metal-artifact-reduction papers (MATLAB `fanbeam`, arc detector).

    Source distance is 1075 pixels in the papers' presets (CNN-MAR/DuDoNet `SOD`). `pixel_size` (mm) defaults to
    the papers' value: 0.3692 mm for the 416² presets (512/416·0.3 mm), 0.6 mm for `adn` (512/256·0.3 mm).

    - `dudonet`: 416², 640 views over 360°, 641 bins of 0.05° (the released "640geo" code)
    - `dudonet_cvpr`: 416², 320 views, 321 bins of 0.1° (the CVPR'19 paper)
    - `adn`: 256², 320 views, 197 bins of 0.1° (ADN's DeepLesion configuration)
    - `adn_half`, `adn_quarter`: `adn` at half (128², 160 views, 99 bins of 0.2°) and a quarter (64², 80 views,
      51 bins of 0.4°) of the size, same fan angle, for the demo, tests and quick runs
    """
    table = {
        # size, views, bins, bin step (deg), pixel (mm), source distance (pixels)
        "dudonet": (416, 640, 641, 0.05, 512 / 416 * 0.3, 1075.0),
        "dudonet_cvpr": (416, 320, 321, 0.1, 512 / 416 * 0.3, 1075.0),
        "adn": (256, 320, 197, 0.1, 512 / 256 * 0.3, 1075.0),
        "adn_half": (128, 160, 99, 0.2, 512 / 128 * 0.3, 1075.0 / 2),
        "adn_quarter": (64, 80, 51, 0.4, 512 / 64 * 0.3, 1075.0 / 4),
    }
    if name not in table:
        raise ConfigError(f"unknown geometry preset {name!r}; choose one of {', '.join(table)}")
    size, views, bins, step_deg, default_px, sod_px = table[name]
    px = default_px if pixel_size is None else float(pixel_size)
    sod = sod_px * px
    return FanBeam(
        n_views=views,
        n_det=bins,
        source_distance=sod,
        detector_distance=sod,  # irrelevant for an arc detector (only angles matter); kept symmetric
        det_spacing=math.radians(step_deg),
        detector="arc",
        image_shape=(size, size),
        pixel_size=px,
    )


PRESETS = ("dudonet", "dudonet_cvpr", "adn", "adn_half", "adn_quarter")
