"""Deep-Q landmark agent (Ghesu et al., the "DRL" baseline of the supervised action classifier's table).

An agent stands on a pixel of a 2-D image, sees the `model.patch` x `model.patch` patch centred there and
moves one pixel per step with the 4 actions of SAC (`kfjax.methods.common.actions.action_steps(2)`:
+row, -row, +col, -col). A small CNN estimates Q(patch, action); it is learned by deep Q-learning, all in
the jitted `train_step`:

1. collect: every training image of the batch gets a fresh start (with probability `agent.near_fraction`
   a Gaussian draw of `agent.near_sigma` px around the landmark, else uniform over the image; starts are
   re-drawn every step because consecutive batches hold other images) and walks `agent.rollout` epsilon-
   greedy steps (epsilon falls linearly from `agent.eps_start` to `agent.eps_end` over
   `agent.eps_decay_steps`). Reward (Ghesu's): the decrease of the Euclidean distance to the landmark in
   pixels, clipped to [-1, 1]; a step ends an episode ("done") when it lands within `agent.done_radius` px.
   A move off the image leaves the agent where it was (reward 0).
2. remember: the transitions (patch, action, reward, next patch, done, weight) go into a ring replay buffer
   of `agent.replay_size` entries held in `TrainState.extra["replay"]` (checkpointed with the state); the
   weight is 0 for images whose landmark is not visible, so they teach nothing.
3. learn: `agent.replay_batch` transitions drawn uniformly from the filled entries; Huber loss between
   Q(s, a) and r + gamma (1 - done) max_a' Q_target(s', a'); Adam. The target network
   (`extra["target"]`) is the online network copied at every step that is a multiple of `agent.target_every`.

Sharding: the collect step runs on the sharded batch; the buffer, the target network and the sampled
minibatch are replicated state, so a sharded step computes exactly what a single device does (every device
repeats the small learning update; only the collection is data-parallel).

Ghesu's reward is positive for every action that brings the agent closer (<e_a, l - q> > 1/2), not only
for SAC's optimal action; the optimal action is the one with the largest reward. Left out of Ghesu's
agent: the multi-scale search and the episode schedule (fresh short walks every step instead).
The Q-network: 3x3 convolutions with 2x2 max pooling (stride-2 convolutions alone, tried first, did not
tell the disk from the second shape (then a square) of the procedural images: 7 px error after 600
steps against 1.7 px).

One agent per landmark (Ghesu trains one per landmark): `data.landmark` picks which of the data set's K.
Inference: the greedy walk (`kfjax.methods.common.actions.greedy_walk`, argmax Q as the policy) from
an `agent.eval_starts` x `agent.eval_starts` grid of starts (`common.actions.start_grid`, as SAC: both walk
from the same pixels) until it revisits a pixel; the estimate is the mean of the final cycle, averaged over the starts. Scores:
landmark error in mm and in pixels (NaN where the landmark is not visible).

    kfjax train dqn_landmark                                              # procedural 32 px images
    kfjax train dqn_landmark --set data.source=drr data.size=64 data.landmark=1
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kfjax import metrics
from kfjax.config import BaseConfig, BaseDataConfig, BaseModelConfig, OptimConfig, TrainConfig
from kfjax.data.landmarks import LANDMARK_NAMES, PROCEDURAL_NAMES, drr_landmarks, procedural_landmarks
from kfjax.data.pipeline import ArrayDataset
from kfjax.errors import ConfigError
from kfjax.methods.common.actions import action_steps, greedy_walk, start_grid
from kfjax.methods.common.landmarks import LandmarkInferConfig, LandmarkResult, infer_landmarks
from kfjax.methods.registry import register
from kfjax.train.method import Inference, Method, Variables
from kfjax.train.precision import apply_network
from kfjax.train.state import TrainState

SOURCES = ("procedural", "drr")
SPLITS = ("train", "val", "test")
N_ACTIONS = 4  # +row, -row, +col, -col (2-D)


@dataclasses.dataclass(frozen=True)
class DataConfig(BaseDataConfig):
    source: str = "procedural"  # procedural (kfjax.data.landmarks.procedural_landmarks) | drr (real chest CT DRRs)
    size: int = 32  # image side in pixels
    landmark: int = 0  # which landmark of the data set this agent finds (one agent per landmark)
    n_landmarks: int = 2  # procedural: landmarks per image
    n_train: int = 256  # procedural: training images
    n_val: int = 32  # procedural: validation and test images (as SAC's)
    hard_test: bool = False  # drr: the test split is the hard ("OB"-like) subset
    batch_size: int = 8  # global batch of training images per step


@dataclasses.dataclass(frozen=True)
class ModelConfig(BaseModelConfig):
    patch: int = 32  # side of the square patch the agent sees, px (even; the same as SAC's)
    channels: tuple[int, ...] = (16, 32, 32)  # features of the 3x3 convolutions, each followed by 2x2 max pooling
    hidden: int = 64  # units of the dense layer before the Q head


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    gamma: float = 0.9  # discount of future rewards
    eps_start: float = 1.0  # epsilon of the epsilon-greedy action at step 0
    eps_end: float = 0.1  # epsilon after eps_decay_steps
    eps_decay_steps: int = 1000  # steps of the linear decay from eps_start to eps_end
    rollout: int = 4  # epsilon-greedy steps each batch image's agent walks per train step
    near_fraction: float = 0.5  # share of starts drawn near the landmark (the rest uniform over the image)
    near_sigma: float = 4.0  # std of the near starts around the landmark, px
    done_radius: float = 1.0  # a step landing within this distance of the landmark ends the episode, px
    replay_size: int = 2048  # ring replay buffer entries (>= data.batch_size x rollout)
    replay_batch: int = 32  # transitions per learning update
    target_every: int = 100  # copy the online network into the target network every this many steps
    eval_starts: int = 2  # greedy-walk starts per axis at inference: a grid of eval_starts^2 (1: the centre)
    max_walk: int = 0  # greedy-walk step limit (0: 3 x (H + W), as SAC's)


@dataclasses.dataclass(frozen=True)
class DQNLandmarkConfig(BaseConfig):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    agent: AgentConfig = AgentConfig()
    optim: OptimConfig = OptimConfig(lr=5e-4)  # Adam
    train: TrainConfig = TrainConfig(steps=2000, log_every=100, checkpoint_every=500)
    infer: LandmarkInferConfig = LandmarkInferConfig()  # `kfjax infer dqn_landmark`: intensity scaling of the input


class QNetwork(nn.Module):
    """Patch `(B, P, P, C)` -> Q values `(B, actions)`: 3x3 convolutions, ReLU and 2x2 max pooling, a dense layer.

    Flattening (no global pooling) keeps where a structure lies in the patch, i.e. its direction.
    """

    channels: tuple[int, ...] = (16, 32, 32)
    hidden: int = 64
    actions: int = N_ACTIONS

    @nn.compact
    def __call__(self, patch: jax.Array) -> jax.Array:
        x = patch
        for c in self.channels:
            x = nn.max_pool(nn.relu(nn.Conv(c, (3, 3))(x)), (2, 2), strides=(2, 2), padding="SAME")
        x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.actions)(x)


# ---------------------------------------------------------------- patches and rewards
def extract_patches(images: jax.Array, positions: jax.Array, size: int) -> jax.Array:
    """Patches `(B, size, size, C)` of images `(B, H, W, C)` centred at integer positions `(B, 2)` (row, col).

    The patch spans rows p - size/2 .. p + size/2 - 1 (the position is its pixel (size/2, size/2));
    outside the image it reads zeros.
    """
    half = size // 2
    padded = jnp.pad(images, ((0, 0), (half, half), (half, half), (0, 0)))

    def one(image, p):
        return jax.lax.dynamic_slice(image, (p[0], p[1], jnp.int32(0)), (size, size, image.shape[-1]))

    return jax.vmap(one)(padded, positions.astype(jnp.int32))


def move(positions: jax.Array, actions: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """Positions `(B, 2)` int32 after one action `(B,)` each; a move off the image stays put."""
    new = positions + jnp.asarray(action_steps(2))[actions]
    inside = jnp.all((new >= 0) & (new < jnp.asarray(shape)), axis=-1, keepdims=True)
    return jnp.where(inside, new, positions).astype(jnp.int32)


def distance_reward(positions: jax.Array, new_positions: jax.Array, landmarks: jax.Array) -> jax.Array:
    """Ghesu's reward `(B,)`: decrease of the Euclidean distance (px) to the landmarks `(B, 2)`, clipped to [-1, 1]."""
    before = jnp.linalg.norm(landmarks - positions, axis=-1)
    after = jnp.linalg.norm(landmarks - new_positions, axis=-1)
    return jnp.clip(before - after, -1.0, 1.0)


def epsilon(step: jax.Array, agent: AgentConfig) -> jax.Array:
    """Exploration rate at `step`: linear from eps_start to eps_end over eps_decay_steps, then constant."""
    frac = jnp.clip(step.astype(jnp.float32) / max(agent.eps_decay_steps, 1), 0.0, 1.0)
    return agent.eps_start + frac * (agent.eps_end - agent.eps_start)


# ---------------------------------------------------------------- the ring replay buffer
def replay_init(capacity: int, patch_shape: tuple[int, ...], dtype=jnp.float32) -> dict[str, jax.Array]:
    """Empty buffer: transition arrays of `capacity` rows, `index` (next row written), `count` (rows filled)."""
    return {"patch": jnp.zeros((capacity, *patch_shape), dtype),
            "next_patch": jnp.zeros((capacity, *patch_shape), dtype),
            "action": jnp.zeros((capacity,), jnp.int32), "reward": jnp.zeros((capacity,), dtype),
            "done": jnp.zeros((capacity,), dtype), "weight": jnp.zeros((capacity,), dtype),
            "index": jnp.zeros((), jnp.int32), "count": jnp.zeros((), jnp.int32)}


TRANSITION_KEYS = ("patch", "next_patch", "action", "reward", "done", "weight")


def replay_push(buffer: dict[str, jax.Array], transitions: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Write n transitions (`{key: (n, ...)}`, n <= capacity) over the oldest rows, in order."""
    capacity = buffer["action"].shape[0]
    n = transitions["action"].shape[0]
    if n > capacity:
        raise ConfigError(f"{n} transitions per step do not fit a replay buffer of {capacity}; raise agent.replay_size")
    rows = (buffer["index"] + jnp.arange(n, dtype=jnp.int32)) % capacity
    out = {k: buffer[k].at[rows].set(transitions[k].astype(buffer[k].dtype)) for k in TRANSITION_KEYS}
    out["index"] = (buffer["index"] + n) % capacity
    out["count"] = jnp.minimum(buffer["count"] + n, capacity)
    return out


def replay_sample(buffer: dict[str, jax.Array], key: jax.Array, n: int) -> dict[str, jax.Array]:
    """n transitions drawn uniformly (with replacement) from the filled rows (call after a push)."""
    rows = jax.random.randint(key, (n,), 0, jnp.maximum(buffer["count"], 1), dtype=jnp.int32)
    return {k: buffer[k][rows] for k in TRANSITION_KEYS}


@register("dqn_landmark")
class DQNLandmarkMethod(Method):
    Config = DQNLandmarkConfig
    description = "deep-Q landmark agent (replay buffer, target network, epsilon-greedy): the DRL baseline"
    paper = "Ghesu et al., MICCAI 2016 / TPAMI 2019 (baseline in Xu et al., MICCAI 2017)"
    inference = Inference(inputs=("volume",), output="landmarks", help="the agent's landmark on a user's 2-D image")

    def __init__(self, config: DQNLandmarkConfig):
        super().__init__(config)
        d, m, a = config.data, config.model, config.agent
        if d.source not in SOURCES:
            raise ConfigError(f"data.source '{d.source}' is not one of {', '.join(SOURCES)}")
        checks = ((d.size >= 8, f"data.size must be at least 8 px, got {d.size}"),
                  (d.landmark >= 0, f"data.landmark must be a landmark index >= 0, got {d.landmark}"),
                  (d.landmark < d.n_landmarks or d.source != "procedural",
                   f"data.landmark={d.landmark} but the procedural images have {d.n_landmarks} landmarks"),
                  (d.landmark < len(LANDMARK_NAMES) or d.source != "drr",
                   f"data.landmark={d.landmark} but the DRRs have {len(LANDMARK_NAMES)} landmarks "
                   f"({', '.join(LANDMARK_NAMES)})"),
                  (m.patch >= 4 and m.patch % 2 == 0, f"model.patch must be an even size >= 4 px, got {m.patch}"),
                  (len(m.channels) >= 1 and min(m.channels) > 0 and m.hidden > 0,
                   "model.channels and model.hidden must be positive"),
                  (0.0 <= a.gamma < 1.0, f"agent.gamma must be in [0, 1), got {a.gamma}"),
                  (0.0 <= a.eps_end <= a.eps_start <= 1.0, "agent needs 0 <= eps_end <= eps_start <= 1"),
                  (min(a.rollout, a.replay_batch, a.target_every, a.eval_starts, a.eps_decay_steps) >= 1,
                   "agent.rollout, replay_batch, target_every, eval_starts and eps_decay_steps must be >= 1"),
                  (0.0 <= a.near_fraction <= 1.0 and a.near_sigma >= 0.0 and a.done_radius >= 0.0,
                   "agent.near_fraction must be in [0, 1], near_sigma and done_radius >= 0"),
                  (a.replay_size >= d.batch_size * a.rollout,
                   f"agent.replay_size={a.replay_size} is below one step's {d.batch_size * a.rollout} transitions "
                   "(data.batch_size x agent.rollout); raise it"),
                  (a.max_walk >= 0, f"agent.max_walk must be >= 0, got {a.max_walk}"))
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.qnet = QNetwork(tuple(m.channels), m.hidden)
        self._datasets: dict[str, ArrayDataset] = {}

    # ---------------------------------------------------------------- data
    def dataset(self, split: str) -> ArrayDataset:
        """Images `(N, S, S, 1)`, the chosen landmark `(N, 2)` (row, col) px, visible `(N,)` 0/1, spacing `(N, 2)`
        mm/px.

        The data do not depend on `seed` (fixed seeds 0/1/2 for train/val/test), so runs of several
        seeds and other methods see the same test images.
        """
        if split not in SPLITS:
            raise ConfigError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        if split not in self._datasets:
            d = self.config.data
            if d.source == "procedural":
                n = d.n_train if split == "train" else d.n_val
                data = procedural_landmarks(n, size=d.size, k=d.n_landmarks, seed=SPLITS.index(split))
            else:
                data = drr_landmarks(split, size=d.size, hard=d.hard_test and split == "test", seed=0)
            arrays = data.arrays
            k = arrays["landmarks"].shape[1]
            if d.landmark >= k:
                raise ConfigError(f"data.landmark={d.landmark} but the {d.source} images have {k} landmarks")
            self._datasets[split] = ArrayDataset(
                image=arrays["image"].astype(np.float32),
                landmark=arrays["landmarks"][:, d.landmark].astype(np.float32),
                visible=arrays["visible"][:, d.landmark].astype(np.float32),
                spacing=arrays["spacing"].astype(np.float32))
        return self._datasets[split]

    def batch_spec(self, batch_size: int):
        s = self.config.data.size
        f32 = lambda *shape: jax.ShapeDtypeStruct((batch_size, *shape), jnp.float32)  # noqa: E731
        return {"image": f32(s, s, 1), "landmark": f32(2), "visible": f32(), "spacing": f32(2)}

    # ---------------------------------------------------------------- state
    def q_values(self, params, patches: jax.Array) -> jax.Array:
        """Q `(B, 4)` float32 of patches `(B, P, P, 1)` under `params` (in the step's compute dtype)."""
        remat = self.config.model.remat == "full"
        return apply_network(self.qnet, {"params": params}, patches, remat=remat)

    def init_variables(self, key: jax.Array, batch) -> Variables:
        p = self.config.model.patch
        image = batch["image"]
        params = self.qnet.init(key, jnp.zeros((1, p, p, image.shape[-1]), image.dtype))["params"]
        replay = replay_init(self.config.agent.replay_size, (p, p, image.shape[-1]), image.dtype)
        return Variables(params={"model": params}, extra={"replay": replay, "target": jax.tree.map(jnp.copy, params)})

    # ---------------------------------------------------------------- training
    def starts(self, key: jax.Array, landmarks: jax.Array) -> jax.Array:
        """Training starts `(B, 2)` int32: near the landmarks (Gaussian) or uniform, per `agent.near_fraction`."""
        a, s = self.config.agent, self.config.data.size
        k_near, k_offset, k_uniform = jax.random.split(key, 3)
        b = landmarks.shape[0]
        near = jnp.rint(landmarks + a.near_sigma * jax.random.normal(k_offset, (b, 2), landmarks.dtype))
        uniform = jax.random.randint(k_uniform, (b, 2), 0, s, dtype=jnp.int32)
        pick = jax.random.uniform(k_near, (b, 1)) < a.near_fraction
        return jnp.where(pick, jnp.clip(near, 0, s - 1).astype(jnp.int32), uniform)

    def collect(self, params, batch, key: jax.Array, eps: jax.Array) -> dict[str, jax.Array]:
        """Transitions `{key: (rollout * B, ...)}` of epsilon-greedy walks from fresh starts on the batch images."""
        a, p = self.config.agent, self.config.model.patch
        images = batch["image"]
        shape = images.shape[1:3]
        visible = batch["visible"] > 0.5
        landmarks = jnp.where(visible[:, None], batch["landmark"], 0.0)  # an invisible landmark may be NaN
        k_start, k_walk = jax.random.split(key)
        b = images.shape[0]

        def walk(pos, k):
            k_explore, k_random = jax.random.split(k)
            patch = extract_patches(images, pos, p)
            greedy = jnp.argmax(self.q_values(jax.lax.stop_gradient(params), patch), axis=-1).astype(jnp.int32)
            random = jax.random.randint(k_random, (b,), 0, N_ACTIONS, dtype=jnp.int32)
            action = jnp.where(jax.random.uniform(k_explore, (b,)) < eps, random, greedy)
            new = move(pos, action, shape)
            reward = distance_reward(pos.astype(landmarks.dtype), new.astype(landmarks.dtype), landmarks)
            done = jnp.linalg.norm(landmarks - new, axis=-1) <= a.done_radius
            return new, (patch, action, reward, done)

        last, (patch, action, reward, done) = jax.lax.scan(
            walk, self.starts(k_start, landmarks), jax.random.split(k_walk, a.rollout))
        next_patch = jnp.concatenate([patch[1:], extract_patches(images, last, p)[None]])
        weight = jnp.broadcast_to(visible, action.shape)
        flat = lambda x: x.reshape(a.rollout * b, *x.shape[2:])  # noqa: E731
        return {"patch": flat(patch), "next_patch": flat(next_patch), "action": flat(action),
                "reward": flat(reward), "done": flat(done).astype(reward.dtype),
                "weight": flat(weight).astype(reward.dtype)}

    def td_loss(self, params, target_params, transitions) -> tuple[jax.Array, jax.Array]:
        """(weighted mean Huber TD error, mean Q(s, a)) of transitions; the target network is held fixed."""
        gamma = self.config.agent.gamma
        q = self.q_values(params, transitions["patch"])
        q_sa = jnp.take_along_axis(q, transitions["action"][:, None], axis=-1)[:, 0]
        q_next = jnp.max(self.q_values(jax.lax.stop_gradient(target_params), transitions["next_patch"]), axis=-1)
        target = transitions["reward"] + gamma * (1.0 - transitions["done"]) * q_next
        w = transitions["weight"]
        huber = optax.huber_loss(q_sa, jax.lax.stop_gradient(target), delta=1.0)
        loss = jnp.sum(w * huber) / jnp.maximum(jnp.sum(w), 1.0)
        return loss, jnp.mean(q_sa)

    def learn(self, state: TrainState, replay: dict[str, jax.Array], key: jax.Array):
        """One Q-learning update on `agent.replay_batch` transitions of `replay`; syncs the target network first
        when the step is a multiple of `agent.target_every`. Returns (state, logs); the buffer is not stored."""
        a = self.config.agent
        params = state.params["model"]
        sync = (state.step % a.target_every) == 0
        target = jax.tree.map(lambda t, p: jnp.where(sync, p, t), state.extra["target"], params)
        sample = replay_sample(replay, key, a.replay_batch)
        (loss, q_mean), grads = jax.value_and_grad(self.td_loss, has_aux=True)(params, target, sample)
        return state.apply_gradients({"model": grads}, extra={"target": target}), {"loss": loss, "q": q_mean}

    def train_step(self, state: TrainState, batch, key: jax.Array):
        a = self.config.agent
        k_collect, k_learn = jax.random.split(key)
        eps = epsilon(state.step, a)
        transitions = self.collect(state.params["model"], batch, k_collect, eps)
        replay = replay_push(state.extra["replay"], transitions)
        state, logs = self.learn(state, replay, k_learn)
        w = transitions["weight"]
        logs = {**logs, "epsilon": eps, "reward": jnp.sum(w * transitions["reward"]) / jnp.maximum(jnp.sum(w), 1.0),
                "replay_fill": replay["count"].astype(jnp.float32) / a.replay_size}
        return state.replace(extra={**state.extra, "replay": replay}), logs

    # ---------------------------------------------------------------- inference and scores
    def eval_starts(self) -> np.ndarray:
        """`(agent.eval_starts ** 2, 2)` int32 starts: centres of an eval_starts x eval_starts tiling (SAC's)."""
        return start_grid(self.config.data.size, self.config.agent.eval_starts)

    def locate(self, params, images: jax.Array) -> jax.Array:
        """Landmark estimates `(B, 2)` (row, col) px: greedy walks of argmax Q from every start, averaged."""
        a, p = self.config.agent, self.config.model.patch
        b, shape = images.shape[0], images.shape[1:3]
        starts = jnp.asarray(self.eval_starts())
        n = starts.shape[0]
        tiled = jnp.tile(images, (n, 1, 1, 1))  # start j of image i is row j * B + i

        def policy(positions):
            return jnp.argmax(self.q_values(params, extract_patches(tiled, positions, p)), axis=-1).astype(jnp.int32)

        max_steps = a.max_walk or 3 * 2 * self.config.data.size
        ends = greedy_walk(policy, jnp.repeat(starts, b, axis=0), tuple(shape), max_steps)
        return jnp.mean(ends.reshape(n, b, 2), axis=0)

    def predict(self, state: TrainState, batch):
        """{"landmarks": `(B, 1, 2)` (row, col) px} (one agent, one landmark)."""
        return {"landmarks": self.locate(state.params["model"], batch["image"])[:, None]}

    @property
    def landmark_names(self) -> tuple[str, ...]:
        """The name of the one landmark this agent finds."""
        d = self.config.data
        return ((LANDMARK_NAMES if d.source == "drr" else PROCEDURAL_NAMES)[d.landmark],)

    def infer(self, state: TrainState, inputs, progress: bool = True) -> LandmarkResult:
        """The landmark on a user's 2-D image (`kfjax infer dqn_landmark`), via `kfjax.methods.common.landmarks`."""
        return infer_landmarks(inputs["volume"], lambda x: self.predict(state, {"image": x})["landmarks"],
                               self.config.data.size, self.landmark_names, self.config.infer)

    def eval_step(self, state: TrainState, batch):
        pred = self.locate(state.params["model"], batch["image"]).astype(batch["landmark"].dtype)
        visible = batch["visible"] > 0.5
        px = metrics.landmark_errors(pred[:, None], batch["landmark"][:, None])[:, 0]
        mm = metrics.landmark_errors(pred[:, None], batch["landmark"][:, None], batch["spacing"])[:, 0]
        nan = jnp.asarray(math.nan, px.dtype)
        return {"error_mm": jnp.where(visible, mm, nan), "error_px": jnp.where(visible, px, nan)}
