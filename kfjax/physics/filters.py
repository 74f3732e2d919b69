"""Ramp filters for filtered backprojection, applied along the detector axis by FFT.

The ramp is the band-limited Ram-Lak kernel of Kak & Slaney (ch. 3): h[0] = 1/(4Δ²), h[n] = -1/(πnΔ)² for odd
n, 0 for even n (Δ = bin spacing), transformed to the frequency domain with zero padding to the next power of
two >= 2·n_det, so the circular convolution never wraps. Windows multiply that response:
shepp-logan sinc(ω/2), cosine cos(ω/2), hann (1 + cos ω)/2, hamming 0.54 + 0.46·cos ω, ω in [-π, π].
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from kfjax.errors import ConfigError

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hann", "hamming")


def padded_size(n_det: int) -> int:
    """Next power of two >= 2·n_det."""
    return int(2 ** np.ceil(np.log2(2 * n_det)))


def ramp_response(n_det: int, spacing: float, name: str = "ram-lak", arc: bool = False) -> np.ndarray:
    """Frequency response `(padded_size(n_det),)` float64 of the windowed ramp for bins `spacing` apart.

    Includes the bin width of the convolution sum, so `ifft(fft(p)·H)` approximates ∫ p(t') h(t - t') dt'.
    `arc=True`: bins are fan angles γ = n·spacing (radians) and the kernel is the equiangular fan-beam one,
    h(γ)·(γ/sin γ)² (Kak & Slaney eq. 3.61 without its factor 1/2).
    """
    if name not in FILTERS:
        raise ConfigError(f"unknown FBP filter {name!r}; choose one of {', '.join(FILTERS)}")
    size = padded_size(n_det)
    n = np.concatenate([np.arange(0, size // 2 + 1), np.arange(-size // 2 + 1, 0)])
    kernel = np.zeros(size)
    kernel[0] = 0.25
    odd = n % 2 == 1
    kernel[odd] = -1.0 / (np.pi * n[odd]) ** 2
    if arc:
        gamma = n[odd] * spacing
        kernel[odd] *= (gamma / np.sin(gamma)) ** 2
    response = np.real(np.fft.fft(kernel)) / spacing  # DTFT of Δ·h(nΔ): |f| up to 1/(2Δ) cycles/mm
    omega = 2 * np.pi * np.fft.fftfreq(size)  # radians per bin, [-π, π)
    if name == "shepp-logan":
        response = response * np.sinc(omega / (2 * np.pi))
    elif name == "cosine":
        response = response * np.cos(omega / 2)
    elif name == "hann":
        response = response * (1 + np.cos(omega)) / 2
    elif name == "hamming":
        response = response * (0.54 + 0.46 * np.cos(omega))
    return response


def ramp_filter(sinogram: jnp.ndarray, spacing: float, name: str = "ram-lak", arc: bool = False) -> jnp.ndarray:
    """Filter `(B, n_views, n_det, C)` along the detector axis; returns the same shape (units: 1/mm × input)."""
    n_det = sinogram.shape[2]
    response = ramp_response(n_det, spacing, name, arc)
    size = response.shape[0]
    spectrum = jnp.fft.rfft(sinogram, n=size, axis=2)
    half = jnp.asarray(response[: size // 2 + 1], dtype=sinogram.dtype)
    filtered = jnp.fft.irfft(spectrum * half[None, None, :, None], n=size, axis=2)
    return filtered[:, :, :n_det, :].astype(sinogram.dtype)
