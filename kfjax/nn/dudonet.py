"""DuDoNet (Lin et al., CVPR 2019): sinogram enhancement, the Radon inversion layer, image enhancement.

    Y_out = Y_LI + M_t ⊙ SE(Y_LI, M_t)                    SE-Net: mask-pyramid U-Net, changes only the trace
    X̂     = RIL(Y_out)                                    fan->parallel rebinning, ramp filter, backprojection
    X_out = X_LI + IE(X̂, X_LI)                            IE-Net: residual U-Net on both images

X_LI is the LI image the caller gives (`li_source="input"`, kfjax's data: the direct fan-beam FBP of Y_LI) or,
as in the paper, RIL(Y_LI) computed here (`li_source="ril"`), so that X_LI and X̂ come from one operator and
differ only where SE-Net changed the sinogram. `se_padding="circular_rows"` makes SE-Net's convolutions wrap
around the view axis (the 0°/360° seam of the scan); "zeros" pads them with zeros. `ril_method="direct"`
makes the RIL the weighted fan-beam FBP (the data's own reconstruction) instead of the paper's rebinning.

The paper writes Y_out = M_t ⊙ SE + (1 - M_t) ⊙ Y_LI; kfjax lets SE-Net predict the correction of the LI
values instead, and both networks' output convolutions start at zero, so an untrained network returns the
LI sinogram and image rather than noise: the same function class, a better starting point.

Inputs and outputs are normalised: images are μ/μ_water (water = 1), sinograms line integrals × `sino_scale`.
`mode` selects the variants of the paper's ablation: "dual" (DuDoNet), "image" (IE-Net on the LI image only,
the CNN-MAR-style learned baseline), "sinogram" (SE-Net + RIL, no image network).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kfjax.nn.mask_pyramid import MaskPyramidUNet
from kfjax.nn.unet import UNet
from kfjax.physics.fbp import fbp

MODES = ("dual", "image", "sinogram")
LI_SOURCES = ("input", "ril")
RIL_METHODS = ("rebin", "direct")


class DuDoNet(nn.Module):
    """`__call__(li_sinogram (B,V,D,1), trace (B,V,D,1), li_image (B,H,W,1))` -> dict of y_out, x_hat, x_out."""

    geometry: object  # FanBeam/ParallelBeam of the data (hashable frozen dataclass)
    image_scale: float  # normalised image = μ · image_scale (1/μ_water, mm)
    sino_scale: float  # normalised sinogram = line integral · sino_scale
    mode: str = "dual"
    se_channels: Sequence[int] = (16, 32, 64, 128)
    ie_channels: Sequence[int] = (16, 32, 64, 128)
    norm: str = "group"
    upsample: str = "nearest"
    filter: str = "ram-lak"
    remat: bool = False  # recompute the U-Nets' blocks in the backward pass (model.remat=blocks)
    li_source: str = "input"  # X_LI: "input" (the li_image argument) | "ril" (RIL(Y_LI), the paper's)
    se_padding: str = "zeros"  # SE-Net convolution padding: zeros | circular_rows (views wrap)
    ril_method: str = "rebin"  # the RIL's FBP: rebin (fan -> parallel, the paper's) | direct (weighted fan FBP)

    def radon_inversion(self, sinogram: jax.Array) -> jax.Array:
        """Normalised sinogram -> normalised image through the differentiable FBP, computed in float32 whatever
        the network's compute dtype (the result is cast back to the sinogram's dtype)."""
        image = fbp(sinogram.astype(jnp.float32) / self.sino_scale, self.geometry, self.filter,
                    fan_method=self.ril_method)
        return (image * self.image_scale).astype(sinogram.dtype)

    @nn.compact
    def __call__(self, li_sinogram: jax.Array, trace: jax.Array, li_image: jax.Array, train: bool = False):
        if self.mode not in MODES:
            raise ValueError(f"DuDoNet mode must be one of {MODES}, got {self.mode!r}")
        if self.li_source not in LI_SOURCES:
            raise ValueError(f"DuDoNet li_source must be one of {LI_SOURCES}, got {self.li_source!r}")
        if self.li_source == "ril":
            li_image = self.radon_inversion(li_sinogram)
        out = {}
        if self.mode in ("dual", "sinogram"):
            se = MaskPyramidUNet(
                1, tuple(self.se_channels), norm=self.norm, upsample=self.upsample, zero_output=True,
                remat=self.remat, padding=self.se_padding, name="se_net"
            )
            enhanced = se(jnp.concatenate([li_sinogram, trace], axis=-1), trace, train)
            out["y_out"] = li_sinogram + trace * enhanced
            out["x_hat"] = self.radon_inversion(out["y_out"])
        if self.mode == "sinogram":
            out["x_out"] = out["x_hat"]
            return out
        ie = UNet(1, tuple(self.ie_channels), norm=self.norm, upsample=self.upsample, zero_output=True,
                  remat=self.remat, name="ie_net")
        inputs = li_image if self.mode == "image" else jnp.concatenate([out["x_hat"], li_image], axis=-1)
        out["x_out"] = li_image + ie(inputs, train)
        return out
