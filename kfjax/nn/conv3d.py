"""3-D convolution on CPU as 2-D convolutions over the kernel's depth taps.

XLA's CPU backend runs a channel-last 3-D convolution several times slower than the equivalent 2-D work
(measured here: a 3×3×3, 32 → 32 channel convolution of batch 2 at 32³ took 1.4 s forward and 4.4 s for
the input and weight gradients, PyTorch 0.37 s and 0.87 s; as three 2-D convolutions 0.21 s and 0.70 s).
So y[d] = Σ_k conv2d(x_pad[s·d + k], w[k]) keeps XLA on its fast 2-D path, forward and backward, with the
same result (summed in another order: equal up to float rounding) and the same parameters:

- depth stride 1 (`stacked`): ONE 2-D convolution over every padded depth plane with the k_D kernels stacked
  on the output channels, z = conv2d(x_pad, [w[0] | w[1] | ...]), then y[d] = Σ_k z[d + k, tap k]. No input
  plane is sliced, so the weight gradient transposes x_pad as it is; slicing planes for each tap made XLA fuse
  the slice into that transpose, a strided loop several times slower than the transpose alone
  (benchmarks/README.md, "3-D U-Net step"). The shifted sum's gradient is written by hand (one stack of
  shifted copies), so its backward pass is one pass over z, not k_D (reverse mode: `jax.grad`, `jax.vjp`;
  forward mode, `jax.jvp`, is not defined for it).
- other depth strides and grouped convolutions (`taps`): one 2-D convolution per depth tap on the planes it
  reads, summed.

Other backends, layouts and dilations fall through to `lax.conv_general_dilated`, and so do convolutions of
fewer than `MIN_STACKED_MACS` (stacked) or `MIN_DEPTH_TAP_MACS` (taps) multiply-adds, where one 3-D
convolution is as fast or compiles faster than the 2-D form saves (each 2-D convolution adds about 0.1 s of
compilation).

    Conv(32, (3, 3, 3))   # Flax's nn.Conv with this convolution (same parameters, same names)
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np
from jax import lax

_NDHWC = ("NDHWC", "DHWIO", "NDHWC")
MIN_STACKED_MACS = 10**7  # depth stride 1: a 3x3x3, 32 -> 32 convolution of batch 2 crosses it at about 6^3 voxels
MIN_DEPTH_TAP_MACS = 10**8  # the tap sum: a 3x3x3, 16 -> 16 convolution of batch 2 crosses it at about 19^3 voxels


def _is_channel_last_3d(lhs, rhs, dimension_numbers) -> bool:
    if lhs.ndim != 5 or rhs.ndim != 5 or dimension_numbers is None:
        return False
    want = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NDHWC)
    return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == want


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None):
    """`lax.conv_general_dilated`, computed for channel-last 3-D inputs on CPU as 2-D convolutions.

    lhs: (B, D, H, W, C_in), rhs: (kD, kH, kW, C_in / groups, C_out) -> (B, D', H', W', C_out).
    """
    kwargs = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                  feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                  precision=precision, preferred_element_type=preferred_element_type)
    rhs_dilation = tuple(rhs_dilation or (1, 1, 1))
    plain = (tuple(lhs_dilation or (1, 1, 1)) == (1, 1, 1) and rhs_dilation[0] == 1 and batch_group_count == 1)
    if jax.default_backend() != "cpu" or not plain or not _is_channel_last_3d(lhs, rhs, dimension_numbers):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
    if isinstance(padding, str):
        window = [(k - 1) * r + 1 for k, r in zip(rhs.shape[:3], rhs_dilation)]
        padding = lax.padtype_to_pads(lhs.shape[1:4], window, window_strides, padding)
    padding = [tuple(p) for p in padding]
    if any(lo < 0 or hi < 0 for lo, hi in padding):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
    depth_stride = window_strides[0]
    windows = [(k - 1) * r + 1 for k, r in zip(rhs.shape[:3], rhs_dilation)]
    out_voxels = lhs.shape[0] * np.prod([(n + lo + hi - k) // s + 1 for n, (lo, hi), k, s in
                                         zip(lhs.shape[1:4], padding, windows, window_strides)])
    stacked = depth_stride == 1 and feature_group_count == 1
    if out_voxels * np.prod(rhs.shape) < (MIN_STACKED_MACS if stacked else MIN_DEPTH_TAP_MACS):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
    x = jax.numpy.pad(lhs, ((0, 0), padding[0], (0, 0), (0, 0), (0, 0)))
    conv2d = functools.partial(lax.conv_general_dilated, window_strides=tuple(window_strides[1:]),
                               padding=padding[1:], rhs_dilation=rhs_dilation[1:],
                               dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision,
                               preferred_element_type=preferred_element_type)
    if stacked:
        return _stacked(x, rhs, conv2d)
    return _taps(x, rhs, depth_stride, feature_group_count, conv2d)


def _stacked(x, rhs, conv2d):
    """Depth stride 1: x (B, D_pad, H, W, C_in) depth-padded, rhs (kD, kH, kW, C_in, C_out) -> (B, D', H', W',
    C_out), D' = D_pad - kD + 1, from one 2-D convolution with kD * C_out output channels."""
    taps, kh, kw, c_in, c_out = rhs.shape
    b, d, h, w, _ = x.shape
    stacked = rhs.transpose(1, 2, 3, 0, 4).reshape(kh, kw, c_in, taps * c_out)  # channel k * C_out + o
    z = conv2d(x.reshape(b * d, h, w, c_in), stacked)
    return _shifted_tap_sum(z.reshape(b, d, *z.shape[1:3], taps, c_out))


@jax.custom_vjp
def _shifted_tap_sum(z):
    """z (B, D_pad, H, W, k_D, C) -> (B, D_pad - k_D + 1, H, W, C): out[:, d] = Σ_k z[:, d + k, ..., k, :].

    Its gradient is written by hand (`_shifted_tap_sum_bwd`) as one stack of shifted copies of the output's
    gradient; the automatic one is k_D zero-padded arrays of z's size summed, which XLA computed as k_D
    separate passes, each repeating the producer of the output's gradient (e.g. a norm's backward)."""
    taps = z.shape[4]
    d_out = z.shape[1] - taps + 1
    out = z[:, :d_out, :, :, 0]
    for k in range(1, taps):
        out = out + z[:, k:k + d_out, :, :, k]
    return out


def _shifted_tap_sum_fwd(z):
    return _shifted_tap_sum(z), z.shape[4]


def _shifted_tap_sum_bwd(taps, g):
    """g (B, D', H, W, C) -> dz (B, D' + k_D - 1, H, W, k_D, C), dz[:, p, ..., k, :] = g[:, p - k] (0 outside)."""
    widths = ((0, 0), (taps - 1, taps - 1), (0, 0), (0, 0), (0, 0))
    g_pad = jax.numpy.pad(g, widths)
    d_pad = g.shape[1] + taps - 1
    return (jax.numpy.stack([g_pad[:, taps - 1 - k:taps - 1 - k + d_pad] for k in range(taps)], axis=4),)


_shifted_tap_sum.defvjp(_shifted_tap_sum_fwd, _shifted_tap_sum_bwd)


def _taps(x, rhs, depth_stride: int, groups: int, conv2d):
    """Any depth stride and grouping: Σ_k conv2d(planes of x read by tap k, rhs[k])."""
    b, d, h, w, c = x.shape
    taps = rhs.shape[0]
    d_out = (d - taps) // depth_stride + 1
    out = None
    for k in range(taps):
        plane = lax.slice_in_dim(x, k, k + depth_stride * (d_out - 1) + 1, stride=depth_stride, axis=1)
        y = conv2d(plane.reshape(b * d_out, h, w, c), rhs[k], feature_group_count=groups)
        out = y if out is None else out + y
    return out.reshape(b, d_out, *out.shape[1:])


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
"""`flax.linen.Conv` computing 3-D convolutions with `conv_general_dilated` above (2-D ones are unchanged)."""
