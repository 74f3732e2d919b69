"""Lovász-softmax loss (Berman et al., CVPR 2018) and the focal loss, as U²-Net trains with them.

The Jaccard loss of class c for a set M of mispredicted voxels is Δ_c(M) = |M| / |F_c ∪ M| (F_c: the
voxels of class c). Its Lovász extension at the error vector m (m_i = |[y_i = c] - p_i(c)|) is

    Δ̄_c(m) = Σ_i m_π(i) (Δ_c({π(1..i)}) - Δ_c({π(1..i-1)})),   π sorting m in decreasing order,

a convex, piecewise-linear surrogate equal to the Jaccard loss at binary predictions. The loss of an image is
the mean of Δ̄_c over the classes present in its label (and allowed by `class_mask`), as the paper's code
("present" classes); an image with no class present scores 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _at_least_float32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _lovasz_gradient(fg_sorted: jax.Array) -> jax.Array:
    """Δ_c(π(1..i)) - Δ_c(π(1..i-1)) for the foreground indicator sorted by decreasing error `(P,)`."""
    total = fg_sorted.sum()
    intersection = total - jnp.cumsum(fg_sorted)
    union = total + jnp.cumsum(1.0 - fg_sorted)
    jaccard = 1.0 - intersection / union
    return jnp.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def _class_loss(prob: jax.Array, fg: jax.Array) -> jax.Array:
    """Lovász extension of the Jaccard loss of one class: probabilities and indicator `(P,)` -> scalar."""
    errors = jnp.abs(fg - prob)
    order = jnp.argsort(-jax.lax.stop_gradient(errors))
    return jnp.dot(errors[order], jax.lax.stop_gradient(_lovasz_gradient(fg[order])))


def lovasz_softmax(logits: jax.Array, labels: jax.Array, class_mask: jax.Array | None = None) -> jax.Array:
    """Per-image Lovász-softmax loss.

    logits: (B, *S, K); labels: (B, *S) int class ids; class_mask: (K,) or (B, K) bool, the classes that
    count (default all). Returns (B,) float32: the mean over the counted classes present in each label.
    """
    batch, classes = logits.shape[0], logits.shape[-1]
    prob = jax.nn.softmax(_at_least_float32(logits), axis=-1).reshape(batch, -1, classes)
    onehot = jax.nn.one_hot(labels.reshape(batch, -1), classes, dtype=prob.dtype)
    per_class = jax.vmap(jax.vmap(_class_loss, in_axes=(1, 1)))(prob, onehot)  # (B, K)
    present = onehot.sum(1) > 0
    if class_mask is not None:
        present = present & jnp.broadcast_to(class_mask, present.shape)
    count = present.sum(-1)
    return jnp.where(count > 0, (per_class * present).sum(-1) / jnp.maximum(count, 1), 0.0)


def focal_loss(logits: jax.Array, labels: jax.Array, gamma: float = 2.0) -> jax.Array:
    """Per-image focal loss mean over voxels of -(1 - p_t)^γ log p_t (Lin et al. 2017), p_t the probability of
    the true class. logits: (B, *S, K); labels: (B, *S) int. Returns (B,) float32."""
    logp = jax.nn.log_softmax(_at_least_float32(logits), axis=-1)
    logp_t = jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    loss = -((1.0 - jnp.exp(logp_t)) ** gamma) * logp_t
    return loss.reshape(loss.shape[0], -1).mean(-1)
