"""Tests of kfjax.losses against hand-computed numpy values."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax import losses as L
from kfjax.errors import InputError

RNG = np.random.default_rng(0)
P = RNG.standard_normal((2, 6, 5, 3)).astype(np.float32)
T = RNG.standard_normal((2, 6, 5, 3)).astype(np.float32)


def J(fn, *args, **static):
    """Call `fn` jit-compiled with keyword arguments held static (one compile, not one per op)."""
    return jax.jit(functools.partial(fn, **static))(*args)


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_bce(x, t):
    p = _np_sigmoid(x.astype(np.float64))
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


@pytest.mark.parametrize("fn, elem", [(L.l1_loss, lambda d: np.abs(d)), (L.l2_loss, lambda d: d**2)])
def test_l1_l2_reductions(fn, elem):
    e = elem(P - T)
    np.testing.assert_allclose(jax.jit(fn)(P, T), e.mean(), rtol=1e-5)
    np.testing.assert_allclose(fn(P, T, reduction="sum"), e.sum(), rtol=1e-5)
    none = fn(P, T, reduction="none")
    assert none.shape == P.shape
    np.testing.assert_allclose(none, e, rtol=1e-5)


def test_masked_l1_averages_over_mask_count():
    mask = np.zeros((2, 6, 5), np.float32)  # no channel axis: broadcast over the 3 channels
    mask[0, :2] = 1
    mask[1, 3, 4] = 1
    sel = mask[..., None].repeat(3, -1) > 0
    want = np.abs(P - T)[sel].mean()  # over 2*5*3 + 3 = 33 elements, not all 180
    np.testing.assert_allclose(jax.jit(L.l1_loss)(P, T, mask), want, rtol=1e-5)
    np.testing.assert_allclose(J(L.l1_loss, P, T, mask, reduction="sum"), np.abs(P - T)[sel].sum(), rtol=1e-5)
    np.testing.assert_allclose(J(L.l2_loss, P, T, mask), ((P - T) ** 2)[sel].mean(), rtol=1e-5)
    none = J(L.l1_loss, P, T, mask, reduction="none")
    assert none.shape == P.shape and float(jnp.abs(none[~sel]).max()) == 0.0


def test_bce_and_softmax_ce():
    targets = (RNG.uniform(size=P.shape) > 0.5).astype(np.float32)
    np.testing.assert_allclose(J(L.bce_with_logits, P, targets), _np_bce(P, targets).mean(), rtol=1e-5)
    big = np.array([100.0, -100.0], np.float32)  # stable for large logits
    np.testing.assert_allclose(J(L.bce_with_logits, big, np.array([1.0, 0.0]), reduction="none"), [0, 0], atol=1e-6)

    logits = RNG.standard_normal((4, 7, 5)).astype(np.float32)
    labels = RNG.integers(0, 5, size=(4, 7))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    none = J(L.softmax_cross_entropy, logits, labels, reduction="none")
    assert none.shape == (4, 7)
    np.testing.assert_allclose(none, want, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(L.softmax_cross_entropy)(logits, labels), want.mean(), rtol=1e-5)
    onehot = np.eye(5)[labels]
    np.testing.assert_allclose(J(L.softmax_cross_entropy, logits, onehot, reduction="sum"), want.sum(), rtol=1e-5)
    with pytest.raises(InputError):
        L.softmax_cross_entropy(logits, labels[:, :3])


def test_soft_dice():
    labels = RNG.integers(0, 3, size=(2, 8, 8))
    onehot = np.eye(3, dtype=np.float32)[labels]
    # perfect prediction -> ~0
    assert float(J(L.soft_dice_loss, onehot, onehot)) < 1e-6
    assert float(J(L.soft_dice_loss, onehot * 40.0 - 20.0, labels, softmax=True)) < 1e-6
    # hand-computed with MONAI's formula, per sample and channel
    probs = jax.nn.softmax(jnp.asarray(P[:, :, :, :3]), axis=-1)
    tgt = np.eye(3, dtype=np.float32)[RNG.integers(0, 3, size=(2, 6, 5))]
    pn = np.asarray(probs)
    inter = (pn * tgt).sum((1, 2))
    want = 1 - (2 * inter + 1e-5) / (pn.sum((1, 2)) + tgt.sum((1, 2)) + 1e-5)
    none = J(L.soft_dice_loss, P, tgt, softmax=True, reduction="none")
    assert none.shape == (2, 3)
    np.testing.assert_allclose(none, want, rtol=1e-5)
    fg = J(L.soft_dice_loss, P, tgt, softmax=True, include_background=False, reduction="none")
    np.testing.assert_allclose(fg, want[:, 1:], rtol=1e-5)
    np.testing.assert_allclose(jax.jit(L.soft_dice_loss, static_argnames="softmax")(P, tgt, softmax=True),
                               want.mean(), rtol=1e-5)
    # sigmoid on a single-channel binary target
    sig = J(L.soft_dice_loss, P[..., :1], tgt[..., :1], sigmoid=True, reduction="sum")
    ps = _np_sigmoid(P[..., :1].astype(np.float64))
    w = 1 - (2 * (ps * tgt[..., :1]).sum((1, 2)) + 1e-5) / (ps.sum((1, 2)) + tgt[..., :1].sum((1, 2)) + 1e-5)
    np.testing.assert_allclose(sig, w.sum(), rtol=1e-5)


def test_focal():
    targets = (RNG.uniform(size=P.shape) > 0.5).astype(np.float32)
    np.testing.assert_allclose(J(L.focal_loss, P, targets, gamma=0.0), J(L.bce_with_logits, P, targets), rtol=1e-6)
    p = _np_sigmoid(P.astype(np.float64))
    pt = np.where(targets > 0, p, 1 - p)
    at = np.where(targets > 0, 0.25, 0.75)
    want = at * (1 - pt) ** 2 * _np_bce(P, targets)
    got = jax.jit(L.focal_loss, static_argnames=("gamma", "alpha", "reduction"))(
        P, targets, gamma=2.0, alpha=0.25, reduction="none")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    g = jax.jit(jax.grad(lambda x: L.focal_loss(x, targets)))(P)
    assert bool(jnp.all(jnp.isfinite(g)))


def test_gan_and_heatmap_losses():
    d = RNG.standard_normal((4, 1)).astype(np.float32)
    np.testing.assert_allclose(J(L.lsgan_loss, d, True), ((d - 1) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(J(L.lsgan_loss, d, False), (d**2).mean(), rtol=1e-5)
    np.testing.assert_allclose(J(L.vanilla_gan_loss, d, True), _np_bce(d, 1.0).mean(), rtol=1e-5)
    np.testing.assert_allclose(J(L.vanilla_gan_loss, d, False, reduction="sum"), _np_bce(d, 0.0).sum(), rtol=1e-5)
    assert J(L.vanilla_gan_loss, d, True, reduction="none").shape == d.shape
    np.testing.assert_allclose(J(L.heatmap_loss, P, T), ((P - T) ** 2).mean(), rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(InputError):
        L.l1_loss(P, T, reduction="avg")
    with pytest.raises(InputError):
        L.l2_loss(P, T[:1])
    with pytest.raises(InputError):
        L.soft_dice_loss(P, T, sigmoid=True, softmax=True)
