"""Deep-Q landmark agent: shapes; the learning step lowers the TD loss on a fixed buffer; sharded == single
device; the ring buffer, the target network's schedule and Ghesu's reward; brief training on procedural
images beats the prior-only guess; bad settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax.config import apply_overrides
from kfjax.errors import ConfigError
from kfjax.methods.common.actions import optimal_action_map
from kfjax.methods.dqn_landmark import (DQNLandmarkConfig, DQNLandmarkMethod, distance_reward,
                                        extract_patches, move, replay_init, replay_push, replay_sample)
from kfjax.train.loop import init_train_state
from kfjax.train.mesh import make_mesh, shard_batch, to_host
from kfjax.train.precision import cast_floats
from kfjax.train.step import make_eval_step, make_predict_step, make_train_step

SMALL = ["data.size=32", "data.batch_size=4", "model.channels=8,16", "model.hidden=16", "agent.replay_size=64",
         "agent.replay_batch=16", "optim.lr=1e-3"]


def _method(*extra):
    return DQNLandmarkMethod(apply_overrides(DQNLandmarkConfig(), [*SMALL, *extra]))


def _blobs(n: int, size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of bright Gaussian blobs (the landmark at the blob's centre) on weak noise; the last one invisible."""
    rng = np.random.default_rng(seed)
    lm = rng.uniform(4, size - 5, (n, 2)).astype(np.float32)
    g = np.arange(size)
    r2 = (g[None, :, None] - lm[:, 0, None, None]) ** 2 + (g[None, None, :] - lm[:, 1, None, None]) ** 2
    image = np.exp(-r2 / 8.0)[..., None] + 0.05 * rng.normal(size=(n, size, size, 1))
    visible = np.ones(n, np.float32)
    visible[-1] = 0.0
    return {"image": image.astype(np.float32), "landmark": lm, "visible": visible,
            "spacing": np.full((n, 2), 0.5, np.float32)}


def test_shapes(stepped):
    method, mesh, state, _ = stepped
    replay = state.extra["replay"]
    assert replay["patch"].shape == replay["next_patch"].shape == (64, 32, 32, 1)
    assert replay["action"].shape == (64,) and int(replay["count"]) == min(7 * 4 * method.config.agent.rollout, 64)
    assert replay["action"].dtype == jnp.int32 and set(np.asarray(replay["action"]).tolist()) <= {0, 1, 2, 3}
    batch = shard_batch(_blobs(4), mesh)
    q = method.q_values(state.params["model"], extract_patches(batch["image"], jnp.zeros((4, 2), jnp.int32), 32))
    assert q.shape == (4, 4) and q.dtype == jnp.float32
    scores = to_host(make_eval_step(method.eval_step, mesh)(state, batch))
    assert set(scores) == {"error_mm", "error_px"}
    assert int(scores["error_mm"].count) == 3  # the invisible landmark is left out
    assert 0.0 < float(scores["error_mm"].total) == pytest.approx(0.5 * float(scores["error_px"].total), rel=1e-5)
    assert method.eval_starts().shape == (9, 2)


def test_infer_returns_the_landmark_of_a_users_image(stepped):
    """`kfjax infer dqn_landmark` path: an image of another size is resampled to the training grid and walked;
    the landmark comes back in its own pixels (inside the padded square the grid covers: an untrained agent
    may stop in the padding) and world mm through its affine."""
    from kfjax.io import Volume
    from kfjax.methods.common.landmarks import GridMap

    method, _, state, _ = stepped
    image = np.random.default_rng(0).uniform(0, 100, (24, 20)).astype(np.float32)
    result = method.infer(state, {"volume": Volume(image, np.diag([0.5, 0.5, 1.0, 1.0]), None)}, progress=False)
    assert result.names == ("disk",) and result.pixel.shape == (1, 2) and result.world.shape == (1, 3)
    low, high = GridMap((20, 24), 32).to_input([[0, 0], [31, 31]])  # the displayed image is (20, 24)
    assert np.all(result.pixel >= low - 1e-9) and np.all(result.pixel <= high + 1e-9), (result.pixel, low, high)
    np.testing.assert_allclose(result.world[:, :2], 0.5 * result.voxel[:, :2], rtol=1e-6)


def test_patches_are_centred_and_read_zeros_outside():
    image = jnp.arange(36.0).reshape(1, 6, 6, 1) + 1.0
    patch = extract_patches(image, jnp.array([[2, 3]]), 4)
    assert patch.shape == (1, 4, 4, 1)
    assert float(patch[0, 2, 2, 0]) == float(image[0, 2, 3, 0])  # the position is the patch pixel (P/2, P/2)
    np.testing.assert_array_equal(patch[0, :, :, 0], image[0, 0:4, 1:5, 0])
    corner = extract_patches(image, jnp.array([[0, 0]]), 4)[0, :, :, 0]
    assert float(jnp.abs(corner[:2]).max()) == 0.0 and float(jnp.abs(corner[:, :2]).max()) == 0.0


def test_ring_buffer_overwrites_the_oldest_and_samples_only_filled_rows():
    def items(ids):
        n = len(ids)
        ids = jnp.asarray(ids, jnp.float32)
        return {"patch": jnp.broadcast_to(ids[:, None, None, None], (n, 2, 2, 1)),
                "next_patch": jnp.zeros((n, 2, 2, 1)),
                "action": jnp.zeros((n,), jnp.int32), "reward": ids, "done": jnp.zeros(n), "weight": jnp.ones(n)}

    buffer = replay_push(replay_init(5, (2, 2, 1)), items([1, 2, 3]))  # empty rows hold id 0
    assert (int(buffer["count"]), int(buffer["index"])) == (3, 3)
    drawn = replay_sample(buffer, jax.random.key(0), 600)
    assert set(np.asarray(drawn["reward"]).tolist()) == {1.0, 2.0, 3.0}  # every filled row, never an empty one
    np.testing.assert_array_equal(drawn["patch"][:, 0, 0, 0], drawn["reward"])  # rows drawn whole
    buffer = replay_push(buffer, items([4, 5, 6, 7]))
    assert (int(buffer["count"]), int(buffer["index"])) == (5, 2)
    np.testing.assert_array_equal(buffer["reward"], [6.0, 7.0, 3.0, 4.0, 5.0])  # 1 and 2, the oldest, are gone
    drawn = replay_sample(buffer, jax.random.key(1), 600)
    assert set(np.asarray(drawn["reward"]).tolist()) == {3.0, 4.0, 5.0, 6.0, 7.0}
    with pytest.raises(ConfigError, match="replay_size"):
        replay_push(buffer, items(range(6)))


def test_reward_is_largest_for_the_optimal_action():
    """Ghesu's reward r(q, a) = |l - q| - |l - q - e_a|. Since |l - q|^2 - |l - q - e_a|^2 = 2 <e_a, l - q> - 1,
    r > 0 exactly when <e_a, l - q> > 1/2, and the largest r is the optimal action argmax_a <e_a, l - q> of
    `optimal_action_map` (ties excepted). Note that a second action can also earn a positive reward (moving
    towards l along the shorter axis); the optimal action's reward is positive wherever some axis is more
    than half a pixel from l. Unit steps keep |r| <= 1, so the clip never acts."""
    size = 16
    landmarks = jnp.array([[5.3, 9.8], [0.0, 15.0], [7.5, 7.5]])
    optimal = np.asarray(optimal_action_map(landmarks, (size, size)))
    grid = jnp.stack(jnp.meshgrid(jnp.arange(size), jnp.arange(size), indexing="ij"), -1).reshape(-1, 2)
    for b in range(landmarks.shape[0]):
        l = jnp.broadcast_to(landmarks[b], grid.shape)
        rewards = np.stack([np.asarray(distance_reward(grid, move(grid, jnp.full(len(grid), a), (size, size)), l))
                            for a in range(4)], axis=-1)
        delta = np.asarray(l - grid)
        scores = np.stack([delta[:, 0], -delta[:, 0], delta[:, 1], -delta[:, 1]], axis=-1)
        inside = np.stack([np.asarray(move(grid, jnp.full(len(grid), a), (size, size)) != grid).any(-1)
                           for a in range(4)], axis=-1)
        np.testing.assert_array_equal(rewards[inside] > 0, scores[inside] > 0.5)
        top2 = np.sort(scores, axis=-1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0] > 1e-4) & (np.abs(delta).max(-1) > 0.5)
        assert clear.sum() > size * size // 2
        np.testing.assert_array_equal(rewards.argmax(-1)[clear], optimal[b].reshape(-1)[clear])
        assert np.all(rewards[clear, optimal[b].reshape(-1)[clear]] > 0)
        assert np.all(np.abs(rewards) <= 1.0 + 1e-6)


def _random_transitions(n: int, seed: int = 0) -> dict[str, jax.Array]:
    """n transitions of random actions from random positions on blob images (rewards and patches exact)."""
    rng = np.random.default_rng(seed)
    data = _blobs(n, seed=seed)
    pos = jnp.asarray(rng.integers(0, 32, (n, 2)), jnp.int32)
    action = jnp.asarray(rng.integers(0, 4, n), jnp.int32)
    new = move(pos, action, (32, 32))
    landmark = jnp.asarray(data["landmark"])
    return {"patch": extract_patches(data["image"], pos, 32), "next_patch": extract_patches(data["image"], new, 32),
            "action": action, "reward": distance_reward(pos, new, landmark),
            "done": (jnp.linalg.norm(landmark - new, axis=-1) <= 1.0).astype(jnp.float32), "weight": jnp.ones(n)}


def test_learning_step_lowers_the_td_loss_on_a_fixed_buffer():
    """The engine's jitted step, learning only (the buffer is frozen and the target network fixed), lowers the
    TD loss over the whole buffer: a regression of 16 fixed targets by a network with thousands of parameters,
    which can fit them almost exactly (measured: 1/5 of the start after 10 steps), so half is a loose bound."""
    method = _method("agent.target_every=1000", "agent.replay_size=16", "agent.replay_batch=64", "optim.lr=3e-3")
    mesh = make_mesh(jax.devices()[:1])
    state = init_train_state(method, mesh, method.batch_spec(4))
    fixed = _random_transitions(16)
    state = state.replace(extra={**state.extra, "replay": replay_push(state.extra["replay"], fixed)})
    td = jax.jit(lambda s: method.td_loss(s.params["model"], s.extra["target"], fixed)[0])
    before = float(td(state))
    learn = make_train_step(lambda s, b, k: method.learn(s, s.extra["replay"], k), mesh)
    for _ in range(10):
        state, logs = learn(state, shard_batch(_blobs(4), mesh))
    np.testing.assert_array_equal(to_host(state.extra["replay"]["reward"]), fixed["reward"])
    assert float(td(state)) < 0.5 * before, (float(td(state)), before)


@pytest.fixture(scope="module")
def stepped():
    """(method, mesh, final state, [(params, target) first leaves before each step] + [after the last]):
    7 engine steps with agent.target_every=3 (the step is compiled once for the tests that share it)."""
    method = _method("agent.target_every=3", "optim.lr=1e-2", "agent.eval_starts=3")
    mesh = make_mesh(jax.devices()[:1])
    state = init_train_state(method, mesh, method.batch_spec(4))
    step = make_train_step(method.train_step, mesh)
    leaf = lambda tree: np.asarray(jax.tree.leaves(to_host(tree))[0])  # noqa: E731
    history = []
    for t in range(7):
        history.append((leaf(state.params["model"]), leaf(state.extra["target"])))
        state, _ = step(state, shard_batch(_blobs(4, seed=t), mesh))
    history.append((leaf(state.params["model"]), leaf(state.extra["target"])))
    return method, mesh, state, history


def test_target_network_changes_only_every_n_steps(stepped):
    history = stepped[3]
    for t in range(7):
        (params, target), (new_params, new_target) = history[t], history[t + 1]
        if t % 3 == 0:  # synced to the parameters this step started from
            np.testing.assert_array_equal(new_target, params)
            assert t == 0 or not np.array_equal(new_target, target)
        else:
            np.testing.assert_array_equal(new_target, target)
        assert not np.array_equal(new_params, params)


def _run(devices, steps, x64=False):
    method = _method("agent.eps_start=0.5", "agent.eps_end=0.5", "agent.target_every=2")
    mesh = make_mesh(devices)
    batch = _blobs(4)
    state = init_train_state(method, mesh, method.batch_spec(4))
    if x64:
        batch, state = cast_floats(batch, np.float64), cast_floats(state, np.float64)
    step = make_train_step(method.train_step, mesh)
    logs = []
    for _ in range(steps):
        state, metrics = step(state, shard_batch(batch, mesh))
        logs.append({k: float(v) for k, v in to_host(metrics).items()})
    return method, mesh, state, logs


@pytest.mark.slow
def test_sharded_step_matches_single_device(n_devices):
    """Three steps on 4 devices equal three on one, in float64: the same transitions (starts and actions come
    from the replicated key; the buffer is replicated state), losses, Q values and predictions. The runs
    differ only in the order of floating-point sums; in float64 (u = 1.1e-16) a few hundred operations per
    value leave <= 1e-13, so rtol = atol = 1e-9 keeps a wide margin and is far below the effect of a real
    sharding error (a wrong transition or minibatch changes the loss at the 1e-2 level). A greedy action
    could flip only at an exact tie of two Q values, which float64 round-off does not reach here."""
    with jax.enable_x64(True):
        method, mesh1, single, single_logs = _run(jax.devices()[:1], 3, x64=True)
        _, mesh, sharded, logs = _run(jax.devices(), 3, x64=True)
        assert mesh.size == n_devices
        for key in ("loss", "q", "reward"):
            np.testing.assert_allclose([r[key] for r in logs], [r[key] for r in single_logs], rtol=1e-9, atol=1e-9)
        a, b = to_host(sharded.extra["replay"]), to_host(single.extra["replay"])
        np.testing.assert_array_equal(a["action"], b["action"])
        np.testing.assert_allclose(a["reward"], b["reward"], rtol=0, atol=1e-12)
        batch = cast_floats(_blobs(4, seed=1), np.float64)
        pa = to_host(make_predict_step(method.predict, mesh)(sharded, shard_batch(batch, mesh)))
        pb = to_host(make_predict_step(method.predict, mesh1)(single, shard_batch(batch, mesh1)))
    np.testing.assert_allclose(pa["landmarks"], pb["landmarks"], rtol=0, atol=1e-9)


@pytest.mark.slow
def test_brief_training_on_procedural_images_beats_the_prior_guess():
    """After 400 steps the greedy walk's mean error on held-out procedural images (find the disk, not the
    ring) is below half the error of the best image-blind guess (the mean training landmark for every
    image) and below the untrained agent's: the agent reads the image (measured once with these settings:
    1.8 px after 400 steps, 3.1 px after 160, against 7.3 px for the blind guess and 17 px untrained)."""
    method = _method("data.batch_size=8", "agent.replay_size=1024", "agent.replay_batch=32", "agent.target_every=50",
                     "agent.eps_decay_steps=200", "data.n_train=256", "data.n_val=32", "optim.lr=1e-3",
                     "model.channels=16,32,32", "model.hidden=64")
    mesh = make_mesh(jax.devices()[:1])
    train, test = method.dataset("train"), method.dataset("test")
    test_batch = shard_batch(test[np.arange(len(test))], mesh)
    evaluate = make_eval_step(method.eval_step, mesh)
    def error(s):
        m = to_host(evaluate(s, test_batch))["error_px"]
        return float(m.total / m.count)

    state = init_train_state(method, mesh, method.batch_spec(8))
    untrained = error(state)
    step = make_train_step(method.train_step, mesh)
    sampler = method.sampler(train, 8)
    for t in range(400):
        state, _ = step(state, shard_batch(train[sampler.indices(t)], mesh))
    visible = test.arrays["visible"] > 0.5
    prior = train.arrays["landmark"][train.arrays["visible"] > 0.5].mean(axis=0)
    blind = float(np.linalg.norm(test.arrays["landmark"][visible] - prior, axis=-1).mean())
    trained = error(state)
    assert trained < 0.5 * blind and trained < untrained, (trained, blind, untrained)


@pytest.mark.parametrize("setting, match", [
    ("data.source=ct", "data.source"), ("model.patch=31", "model.patch"), ("agent.gamma=1.0", "agent.gamma"),
    ("agent.replay_size=8", "replay_size"), ("data.landmark=2", "data.landmark"), ("agent.eps_end=1.0", "eps_end"),
    ("agent.rollout=0", "rollout"), ("agent.near_fraction=1.5", "near_fraction"), ("data.size=4", "data.size"),
    ("agent.max_walk=-1", "max_walk"), ("agent.warp=1", "unknown config key")])
def test_bad_settings_are_config_errors(setting, match):
    with pytest.raises(ConfigError, match=match):
        _method(*(["agent.eps_start=0.9"] if "eps_end" in setting else []), setting)


def test_unknown_split_is_a_config_error():
    with pytest.raises(ConfigError, match="split"):
        _method().dataset("testing")
