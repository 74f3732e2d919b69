"""Global convolution network blocks (Peng et al., CVPR 2017, "Large kernel matters") and the multitask
view-classification + landmark network built from them (MGCN, Xu et al., MICCAI 2018), 2-D channel-last.

- `GCN`: two parallel separable large-kernel paths, (k x 1 -> 1 x k) + (1 x k -> k x 1), summed: a k x k
  receptive field with 4k instead of k² weights per channel pair. No nonlinearity inside (as in the paper).
- `BoundaryRefinement`: x + conv3(relu(conv3(x))), the residual block that sharpens boundaries.
- `ResidualUnit`: conv3 (stride s) -> norm -> relu -> conv3 -> norm, plus a 1x1 projection shortcut when the
  shape changes, then relu: the ResNet-style unit of the shared encoder.
- `MGCN`: shared encoder (one residual unit per level, stride 2 between levels); a view head (residual unit
  + global average pool + dense to `n_views`); a landmark decoder (a residual unit, then per scale from the
  coarsest to half resolution: GCN -> boundary refinement, summed with the x2-upsampled coarser map, refined
  again; a 1x1 conv to `n_landmarks` heatmaps at half resolution, resized bilinearly to the input size: the
  full-resolution decoder level cost 4x the rest of the network on CPU and is left out). `view_head` / `landmark_head` switch the branches off for the
  single-task baselines (SFCN = the landmark branch alone); `gcn=False` puts a 3x3 conv where each GCN is.

    net = MGCN(n_views=11, n_landmarks=12, channels=(16, 32, 64, 64), kernel=7)
    logits, heatmaps = net.apply(variables, image)     # (B, 11), (B, H, W, 12)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kfjax.nn.blocks import Norm, upsample_nearest

__all__ = ["GCN", "BoundaryRefinement", "MGCN", "ResidualUnit", "gcn_kernel"]

HEATMAP_INIT_SCALE = 1e-4  # variance scale of the last 1x1 conv: heatmaps start near 0, far below the peak-1 targets


class GCN(nn.Module):
    """(k x 1 -> 1 x k) + (1 x k -> k x 1) convolutions, 'SAME' zero padding: `(B, H, W, C) -> (B, H, W, features)`."""

    features: int
    kernel: int = 7  # k, odd

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"GCN kernel must be a positive odd number, got {self.kernel}")
        k = self.kernel
        left = nn.Conv(self.features, (1, k), name="left_1xk")(nn.Conv(self.features, (k, 1), name="left_kx1")(x))
        right = nn.Conv(self.features, (k, 1), name="right_kx1")(nn.Conv(self.features, (1, k), name="right_1xk")(x))
        return left + right


class BoundaryRefinement(nn.Module):
    """x + conv3(relu(conv3(x))), channels kept."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        return x + nn.Conv(c, (3, 3))(nn.relu(nn.Conv(c, (3, 3))(x)))


class ResidualUnit(nn.Module):
    """relu(shortcut(x) + norm(conv3(relu(norm(conv3_s(x)))))): stride `strides`, `features` channels."""

    features: int
    strides: int = 1
    norm: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        s, bias = (self.strides, self.strides), self.norm == "none"
        y = nn.Conv(self.features, (3, 3), strides=s, use_bias=bias)(x)
        y = nn.relu(Norm(self.norm)(y, train))
        y = Norm(self.norm)(nn.Conv(self.features, (3, 3), use_bias=bias)(y), train)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = Norm(self.norm)(nn.Conv(self.features, (1, 1), strides=s, use_bias=bias)(x), train)
        return nn.relu(x + y)


def gcn_kernel(kernel: int, side: int) -> int:
    """The GCN kernel used on a `side`-pixel feature map: `kernel`, capped at the largest odd size <= side."""
    return max(1, min(kernel, side if side % 2 else side - 1))


class MGCN(nn.Module):
    """Shared encoder + view head + GCN landmark decoder: `(B, H, W, 1) -> (logits (B, n_views) | None,
    heatmaps (B, H, W, n_landmarks) | None)`. H and W must divide by 2**(len(channels) - 1)."""

    n_views: int = 11
    n_landmarks: int = 12
    channels: tuple[int, ...] = (8, 16, 32, 64)  # encoder features per level, finest first
    decoder_features: int = 16  # channels of every GCN / boundary-refinement map of the decoder
    kernel: int = 7  # GCN k at the finest scale (capped per scale by the map size)
    gcn: bool = True  # False: a 3x3 convolution in place of every GCN (the ablation)
    view_head: bool = True  # build the view classification branch
    landmark_head: bool = True  # build the landmark heatmap branch
    norm: str = "none"  # encoder normalisation: none | group | layer (kfjax.nn.blocks names; not batch)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        levels = len(self.channels)
        if x.ndim != 4 or x.shape[1] % 2 ** (levels - 1) or x.shape[2] % 2 ** (levels - 1):
            raise ValueError(f"MGCN needs (B, H, W, C) with H, W divisible by {2 ** (levels - 1)}, got {x.shape}")
        skips = []
        for i, c in enumerate(self.channels):
            x = ResidualUnit(c, 1 if i == 0 else 2, self.norm, name=f"encoder_{i}")(x, train)
            skips.append(x)
        logits = heatmaps = None
        if self.view_head:
            v = ResidualUnit(self.channels[-1], 1, self.norm, name="view_block")(skips[-1], train)
            logits = nn.Dense(self.n_views, name="view_dense")(jnp.mean(v, axis=(1, 2)))
        if self.landmark_head:
            skips[-1] = ResidualUnit(self.channels[-1], 1, self.norm, name="landmark_block")(skips[-1], train)
            d = None
            for i in reversed(range(1, levels)):  # the full-resolution level is not decoded (cost)
                f = skips[i]
                if self.gcn:
                    k = gcn_kernel(self.kernel, min(f.shape[1], f.shape[2]))
                    s = GCN(self.decoder_features, k, name=f"gcn_{i}")(f)
                else:
                    s = nn.Conv(self.decoder_features, (3, 3), name=f"conv_{i}")(f)
                s = BoundaryRefinement(name=f"br_{i}")(s)
                if d is not None:
                    s = BoundaryRefinement(name=f"br_sum_{i}")(s + upsample_nearest(d, 2))
                d = s
            small = nn.initializers.variance_scaling(HEATMAP_INIT_SCALE, "fan_in", "normal")
            half = nn.Conv(self.n_landmarks, (1, 1), kernel_init=small, name="heatmaps")(d)
            heatmaps = jax.image.resize(half, (*x.shape[:1], *skips[0].shape[1:3], self.n_landmarks), "linear")
        return logits, heatmaps
