"""Optimisers from an OptimConfig: Adam/AdamW/SGD, warm-up, constant/cosine/step schedules, clipping.

Clipping (`grad_clip` > 0) bounds the global norm of a group's gradient (`clip_scope="group"`) or of each
top-level submodule's gradient apart (`clip_scope="module"`), so that one network with large gradients (e.g.
DuDoNet's SE-Net) does not shrink the steps of another (its IE-Net) that shares the group.

`weight_decay` is decoupled for adamw and an L2 term added to the gradient for adam and sgd (PyTorch's
`weight_decay` argument of those optimisers), so no setting is silently ignored.
"""

from __future__ import annotations

import optax

from kfjax.config import OptimConfig
from kfjax.errors import ConfigError

CLIP_SCOPES = ("group", "module")  # optim.clip_scope: one norm per parameter group | one per top-level submodule


def learning_rate(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Learning rate per step."""
    if cfg.schedule == "constant":
        main = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(cfg.lr, max(total_steps - cfg.warmup_steps, 1))
    elif cfg.schedule == "step":
        if cfg.decay_every <= 0:
            raise ConfigError("optim.schedule=step needs optim.decay_every > 0")
        main = optax.exponential_decay(cfg.lr, cfg.decay_every, cfg.decay_factor, staircase=True)
    else:
        raise ConfigError(f"unknown optim.schedule '{cfg.schedule}'; choose constant, cosine or step")
    if cfg.warmup_steps:
        warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
        return optax.join_schedules([warmup, main], [cfg.warmup_steps])
    return main


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """The optax transform of one parameter group."""
    lr = learning_rate(cfg, total_steps)
    if cfg.name == "adamw":
        opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    elif cfg.name in ("adam", "sgd"):
        opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2) if cfg.name == "adam" else optax.sgd(lr, momentum=cfg.b1)
        if cfg.weight_decay:  # L2 added to the gradient before the update, as PyTorch's Adam and SGD do
            opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay), opt)
    else:
        raise ConfigError(f"unknown optim.name '{cfg.name}'; choose adam, adamw or sgd")
    if cfg.clip_scope not in CLIP_SCOPES:
        raise ConfigError(f"unknown optim.clip_scope '{cfg.clip_scope}'; choose {' or '.join(CLIP_SCOPES)}")
    if cfg.grad_clip > 0:
        clip = optax.clip_by_global_norm if cfg.clip_scope == "group" else clip_each_module
        opt = optax.chain(clip(cfg.grad_clip), opt)
    return opt


def clip_each_module(max_norm: float) -> optax.GradientTransformation:
    """`optax.clip_by_global_norm(max_norm)` applied to each top-level entry of a gradient dict apart
    (a Flax parameter tree's entries are its submodules); a gradient that is not a dict is clipped whole."""
    whole = optax.clip_by_global_norm(max_norm)

    def update(updates, state, params=None):
        if not hasattr(updates, "items"):
            return whole.update(updates, state)[0], state
        return type(updates)({k: whole.update(v, optax.EmptyState())[0] for k, v in updates.items()}), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
