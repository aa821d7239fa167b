"""Training: trajectories, datasets, checkpoints, resume, divergence."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import checkpoint, data, train


def _toy(name="xor", n=256):
  return data.load(name, key=jax.random.key(0), n_train=n, n_test=n)


def test_xor_trains_to_full_accuracy():
  ds = _toy("xor")
  model = fnn.MLP((2, 8, 2), activation="tanh")
  opt = fnn.make_optimizer("adam", 1e-2)
  state = fnn.init_state(model, opt, jax.random.key(0))
  assert isinstance(state, fnn.TrainState) and state._fields == (
      "params", "opt_state", "step", "key")
  seen = []
  state, hist = fnn.fit(model, opt, state, ds, epochs=40, batch_size=32,
                        callback=lambda m, s: seen.append((m, int(s.step))))
  assert [m for m, _ in seen] == hist  # the callback sees every epoch
  assert [step for _, step in seen] == [m["step"] for m in hist]
  assert hist[-1]["test_accuracy"] == 1.0
  assert hist[-1]["step"] == 40 * (256 // 32) == int(state.step)
  assert hist[-1]["train_loss"] < hist[0]["train_loss"]


def test_digits_short_run_reaches_095():
  ds = data.load("digits")
  model = fnn.MLP((64, 64, 10), activation="relu")
  opt = train.make_optimizer("adam", 1e-3)
  state = train.init_state(model, opt, jax.random.key(0), scheme="he")
  _, hist = train.fit(model, opt, state, ds, epochs=20, batch_size=32)
  assert hist[-1]["test_accuracy"] >= 0.95


PLAIN = train.StepConfig()
L2_DROPOUT = train.StepConfig(weight_decay=1e-2, dropout=0.3)
# Both gradient sources feed the same optimizer, so one optimizer per step
# configuration is the default run (plain SGD; AdamW, whose normalization
# amplifies gradient differences, with L2 and dropout); the other six
# combinations are slow.
TRAJECTORIES = [
    pytest.param(cfg, opt, id=f"{opt}-{name}", marks=() if (opt, name) in (
        ("sgd", "plain"), ("adamw", "l2-dropout")) else pytest.mark.slow)
    for opt in ("sgd", "momentum", "adam", "adamw")
    for name, cfg in (("plain", PLAIN), ("l2-dropout", L2_DROPOUT))]


@pytest.mark.parametrize("cfg,opt_name", TRAJECTORIES)
def test_hand_and_autodiff_give_the_same_trajectory(cfg, opt_name):
  """float64, 3 epochs: the two gradient sources agree to ~1e-12."""
  ds = _toy("moons", 64)
  ds = ds._replace(x=ds.x.astype(np.float64), x_test=ds.x_test.astype(np.float64))
  model = fnn.MLP((2, 9, 7, 2), activation="gelu")
  opt = train.make_optimizer(opt_name, 1e-2, schedule="cosine", total_steps=24,
                             weight_decay=1e-2)
  state = train.init_state(model, opt, jax.random.key(1), jnp.float64)
  hand, _ = train.fit(model, opt, state, ds, epochs=3, batch_size=8, cfg=cfg)
  auto, _ = train.fit(model, opt, state, ds, epochs=3, batch_size=8,
                      cfg=cfg._replace(grads="autodiff"))
  # 24 optimizer steps amplify per-step rounding (~1e-16) a little; Adam's
  # normalization can amplify tiny gradient differences, hence 1e-9.
  chex.assert_trees_all_close(hand.params, auto.params, rtol=1e-9, atol=1e-11)
  assert not np.allclose(hand.params[0].w, state.params[0].w)


def test_train_step_is_jitted_and_pure():
  model = fnn.MLP((2, 5, 2), activation="tanh")
  opt = fnn.make_optimizer("sgd", 0.1)
  state = fnn.init_state(model, opt, jax.random.key(0), jnp.float64)
  x = jax.random.normal(jax.random.key(1), (8, 2), jnp.float64)
  y = jnp.arange(8) % 2
  cfg = fnn.StepConfig()
  before = jax.tree.map(np.array, state.params)
  new, loss = fnn.train_step(model, opt, cfg, state, x, y)
  assert hasattr(fnn.train_step, "lower")  # a jax.jit-wrapped function
  chex.assert_trees_all_equal(state.params, before)  # input untouched
  # SGD: params - lr * (the hand-derived gradient), step and key advance.
  # The references jitted: op by op, each of their ops compiles on its own.
  grad = jax.jit(fnn.grad, static_argnums=0)
  mean_loss = jax.jit(type(model).mean_loss, static_argnums=0)
  want = jax.tree.map(lambda p, g: p - 0.1 * g, state.params,
                      grad(model, state.params, x, y))
  chex.assert_trees_all_close(new.params, want, rtol=1e-12, atol=1e-14)
  assert int(new.step) == 1 and not np.array_equal(
      jax.random.key_data(new.key), jax.random.key_data(state.key))
  assert float(loss) == pytest.approx(
      float(mean_loss(model, state.params, x, y)), rel=1e-12)


def test_loss_and_grads_with_regularization_matches_jax_grad():
  model = fnn.MLP((3, 6, 4, 2), activation="relu")
  params = model.init(jax.random.key(0), jnp.float64)
  x = jax.random.normal(jax.random.key(1), (10, 3), jnp.float64)
  y = jnp.arange(10) % 2
  cfg = train.StepConfig(weight_decay=0.1, dropout=0.5)
  k = jax.random.key(2)
  # Jitted: op by op, dropout's unrolled Threefry alone costs seconds.
  fn = jax.jit(train.loss_and_grads, static_argnums=(0, 1))
  hand = fn(model, cfg, params, x, y, k)
  auto = fn(model, cfg._replace(grads="autodiff"), params, x, y, k)
  chex.assert_trees_all_close(hand, auto, rtol=1e-10, atol=1e-12)


def test_divergence_raises_with_last_good_state():
  ds = _toy("xor", 64)
  model = fnn.MLP((2, 8, 2), activation="relu", output="identity",
                  loss="squared_error")
  opt = train.make_optimizer("sgd", 1e4)
  state = train.init_state(model, opt, jax.random.key(0))
  with pytest.raises(train.Diverged) as err:
    train.fit(model, opt, state, ds, epochs=50, batch_size=8)
  good = err.value.state
  chex.assert_tree_all_finite(good.params)
  assert int(good.step) == (err.value.epoch - 1) * 8


def test_fit_rejects_bad_settings():
  ds = _toy("xor", 64)
  model = fnn.MLP((2, 3, 2))
  opt = train.make_optimizer("sgd", 0.1)
  state = train.init_state(model, opt, jax.random.key(0))
  with pytest.raises(ValueError, match=r"epochs must be at least 1, got 0"):
    train.fit(model, opt, state, ds, epochs=0, batch_size=8)
  with pytest.raises(ValueError, match=r"batch size must be in \[1, 64\].*65"):
    train.fit(model, opt, state, ds, epochs=1, batch_size=65)
  with pytest.raises(ValueError, match=r"unknown optimizer 'adagrad'"):
    train.make_optimizer("adagrad", 0.1)
  with pytest.raises(ValueError, match=r"unknown schedule 'step'"):
    train.make_optimizer("sgd", 0.1, schedule="step")


def _state():
  model = fnn.MLP((3, 4, 2))
  opt = train.make_optimizer("adamw", 1e-3)
  return train.init_state(model, opt, jax.random.key(0))


def _leaves(state):
  return jax.tree.leaves(state._replace(key=jax.random.key_data(state.key)))


def test_checkpoint_round_trip(tmp_path):
  state = _state()
  path = str(tmp_path / "c.npz")
  checkpoint.save(path, state, {"lr": 1e-3})
  loaded, config = checkpoint.load(path, state)
  assert config == {"lr": 1e-3}
  chex.assert_trees_all_equal(_leaves(loaded), _leaves(state))
  assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temp left


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupted_checkpoint_is_refused_and_kept(tmp_path, damage):
  state = _state()
  path = tmp_path / "c.npz"
  checkpoint.save(str(path), state, {})
  blob = path.read_bytes()
  if damage == "truncate":
    blob = blob[: len(blob) // 2]
  elif damage == "flip":  # inside the first leaf's data: the checksum catches it
    i = blob.index(b"leaf_0000.npy") + 200
    blob = blob[:i] + bytes([blob[i] ^ 0xFF]) + blob[i + 1:]
  else:
    blob = b"not a checkpoint"
  path.write_bytes(blob)
  with pytest.raises(ValueError, match=r"corrupted"):
    checkpoint.load(str(path), state)
  assert path.read_bytes() == blob


def test_mismatched_checkpoint_is_refused(tmp_path):
  path = str(tmp_path / "c.npz")
  checkpoint.save(path, _state(), {})
  model = fnn.MLP((3, 5, 2))
  opt = train.make_optimizer("adamw", 1e-3)
  other = train.init_state(model, opt, jax.random.key(0))
  with pytest.raises(ValueError, match=r"array 0 is float32\[3, 4\], this run "
                     r"expects float32\[3, 5\]"):
    checkpoint.load(path, other)


def test_idx_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, size=(20, 4, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, size=20, dtype=np.uint8)
  for gz in ("", ".gz"):
    data.write_idx(str(tmp_path / f"a{gz}"), imgs)
    np.testing.assert_array_equal(data.read_idx(str(tmp_path / f"a{gz}")), imgs)
  names = {"train-images-idx3-ubyte.gz": imgs, "train-labels-idx1-ubyte":
           labels, "t10k-images-idx3-ubyte": imgs[:5],
           "t10k-labels-idx1-ubyte.gz": labels[:5]}
  for name, arr in names.items():
    data.write_idx(str(tmp_path / name), arr)
  ds = data.load(f"mnist-idx:{tmp_path}")
  assert ds.x.shape == (20, 12) and ds.x_test.shape == (5, 12)
  np.testing.assert_array_equal(ds.y, labels)
  np.testing.assert_allclose(ds.x.mean(), 0, atol=1e-5)  # one mean for images
  np.testing.assert_allclose(ds.x.std(), 1, rtol=1e-5)
  (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00")
  with pytest.raises(ValueError, match=r"truncated IDX header|IDX"):
    data.load(f"mnist-idx:{tmp_path}")


def test_npz_loader_and_errors(tmp_path):
  rng = np.random.default_rng(0)
  arrays = dict(x=rng.normal(size=(30, 4)), y=rng.integers(0, 3, 30),
                x_test=rng.normal(size=(10, 4)), y_test=rng.integers(0, 3, 10))
  np.savez(tmp_path / "d.npz", **arrays)
  ds = data.load(f"npz:{tmp_path / 'd.npz'}")
  assert ds.num_classes == 3 and ds.x.dtype == np.float32
  bad = dict(arrays, x=np.where(np.arange(120).reshape(30, 4) == 5, np.nan,
                                arrays["x"]))
  np.savez(tmp_path / "nan.npz", **bad)
  with pytest.raises(ValueError, match=r"NaN"):
    data.load(f"npz:{tmp_path / 'nan.npz'}")
  np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object),
           y=arrays["y"], x_test=arrays["x_test"], y_test=arrays["y_test"])
  with pytest.raises(ValueError, match=r"cannot read npz"):
    data.load(f"npz:{tmp_path / 'obj.npz'}")
  with pytest.raises(ValueError, match=r"lacks arrays \['y_test'\]"):
    np.savez(tmp_path / "part.npz", x=arrays["x"], y=arrays["y"],
             x_test=arrays["x_test"])
    data.load(f"npz:{tmp_path / 'part.npz'}")
  with pytest.raises(ValueError, match=r"unknown dataset 'mnist2d'"):
    data.load("mnist2d")


@pytest.mark.parametrize("sampling", [
    "poisson", pytest.param("shuffle", marks=pytest.mark.slow)])  # 12 s
def test_dp_sgd_hand_and_autodiff_give_the_same_trajectory(sampling):
  """float64: one-pass clipping (hand) == materialized clipping (autodiff),
  with the same noise keys, through 2 epochs of AdamW with dropout."""
  ds = _toy("moons", 64)
  ds = ds._replace(x=ds.x.astype(np.float64), x_test=ds.x_test.astype(np.float64))
  model = fnn.MLP((2, 9, 7, 2), activation="tanh")
  opt = train.make_optimizer("adamw", 1e-2, weight_decay=1e-2)
  state = train.init_state(model, opt, jax.random.key(1), jnp.float64)
  cfg = train.StepConfig(dropout=0.2, dp_clip=0.5, dp_noise=0.7,
                         dp_sampling=sampling)
  hand, _ = train.fit(model, opt, state, ds, epochs=2, batch_size=8, cfg=cfg)
  auto, _ = train.fit(model, opt, state, ds, epochs=2, batch_size=8,
                      cfg=cfg._replace(grads="autodiff"))
  chex.assert_trees_all_close(hand.params, auto.params, rtol=1e-9, atol=1e-11)
  assert not np.allclose(hand.params[0].w, state.params[0].w)


def test_poisson_batches_have_the_sampling_rate():
  n, b, steps = 4000, 100, 400
  # Jitted: one compilation instead of one per op of the vmapped sampling.
  batches = jax.jit(train._poisson_batches, static_argnums=(1, 2, 3))
  idx, w = batches(jax.random.key(0), n, b, steps)
  cap = train.poisson_capacity(n, b)
  assert idx.shape == (steps, cap) and w.shape == (steps, cap)
  sizes = np.asarray(w.sum(axis=1))
  # Binomial(4000, 0.025): mean 100, std 9.9; over 400 steps the mean's
  # standard error is 0.49, so 2.5 is ~5 sigma.
  assert abs(sizes.mean() - 100) < 2.5 and 6 < sizes.std() < 14
  assert sizes.max() < cap  # no step overflowed the buffer
  # Chosen indices are distinct within a step and valid.
  first = np.asarray(idx[0][: int(sizes[0])])
  assert len(set(first.tolist())) == len(first) and first.max() < n


def test_log_grad_stats_in_fit():
  ds = _toy("xor", 128)
  model = fnn.MLP((2, 8, 2), activation="tanh")
  opt = train.make_optimizer("adam", 1e-2)
  state = train.init_state(model, opt, jax.random.key(0))
  _, hist = train.fit(model, opt, state, ds, epochs=2, batch_size=16,
                      log_grad_stats=True)
  for h in hist:
    assert h["noise_scale"] == pytest.approx(h["trace_sigma"] /
                                             h["grad_sq_norm"])
    assert h["grad_norm_mean"] > 0 and len(h["variance_per_layer"]) == 2
  with pytest.raises(ValueError, match="needs a clipping norm"):
    train.fit(model, opt, state, ds, epochs=1, batch_size=16,
              cfg=train.StepConfig(dp_noise=1.0))


def test_bfloat16_mixed_precision():
  """Forward and backward in bfloat16, float32 master params and state."""
  ds = data.load("digits")
  model = fnn.MLP((64, 64, 10), activation="relu")
  opt = train.make_optimizer("adam", 2e-3)
  state = train.init_state(model, opt, jax.random.key(0), jnp.float32, "he")
  cfg = train.StepConfig(compute_dtype="bfloat16", dropout=0.1)
  final, hist = train.fit(model, opt, state, ds, epochs=8, batch_size=32,
                          cfg=cfg)
  assert hist[-1]["test_accuracy"] >= 0.9  # float32 reaches ~0.96 here
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(final.params))
  assert all(l.dtype in (jnp.float32, jnp.int32) for l in jax.tree.leaves(
      final.opt_state))
  x, y = jnp.asarray(ds.x[:32]), jnp.asarray(ds.y[:32])
  jaxpr = jax.make_jaxpr(train.train_step, static_argnums=(0, 1, 2))(
      model, opt, cfg, state, x, y)
  text = str(jaxpr)
  # Every matmul of the step runs on bfloat16 operands.
  dot_lines = [l for l in text.splitlines() if "dot_general" in l]
  assert dot_lines and all("bf16" in l for l in dot_lines), dot_lines[:3]


def test_runs_with_equal_settings_share_one_compilation():
  assert train.make_optimizer("adam", 1e-3) is train.make_optimizer("adam",
                                                                     1e-3)
  assert train.make_optimizer("adam", 1e-3) is not train.make_optimizer(
      "adam", 2e-3)
  ds = _toy("xor", 64)
  model = fnn.MLP((2, 5, 2), activation="tanh")
  sizes = []
  for seed in range(3):
    opt = train.make_optimizer("adam", 1e-2)
    state = train.init_state(model, opt, jax.random.key(seed))
    train.fit(model, opt, state, ds, epochs=2, batch_size=16)
    sizes.append(train.train_epoch._cache_size())
  assert sizes[0] == sizes[1] == sizes[2]  # seeds 1, 2 reuse seed 0's


def test_fit_checks_data_before_compiling():
  ds = _toy("xor", 64)
  model = fnn.MLP((2, 3, 2))
  opt = train.make_optimizer("sgd", 0.1)
  state = train.init_state(model, opt, jax.random.key(0))
  compiled = train.train_epoch._cache_size()
  fit = lambda d, m=model: train.fit(m, opt, state, d, epochs=1, batch_size=8)
  # Traced labels would one-hot to zero rows: loss and gradient 0, silently.
  with pytest.raises(ValueError, match=r"data.y: class label 7 is outside "
                     r"\[0, 2\) for n_out=2"):
    fit(ds._replace(y=np.where(np.arange(64) == 3, 7, ds.y)))
  with pytest.raises(ValueError, match=r"data.y_test: class label -1 is "
                     r"outside \[0, 2\)"):
    fit(ds._replace(y_test=np.where(np.arange(64) == 0, -1, ds.y_test)))
  with pytest.raises(ValueError, match=r"data.y: y of shape \(64,\) is read "
                     r"as class labels and must be integer"):
    fit(ds._replace(y=ds.y.astype(np.float32)))
  with pytest.raises(ValueError, match=r"data.y_test: y must have shape"):
    fit(ds._replace(y_test=ds.y_test[:10]))
  with pytest.raises(ValueError, match=r"data.x has shape \(64, 2\), model "
                     r"\(3, 4, 2\) expects \[n, 3\]"):
    fit(ds, fnn.MLP((3, 4, 2)))
  with pytest.raises(ValueError, match=r"data.x_test has shape \(64, 3\)"):
    fit(ds._replace(x_test=np.ones((64, 3), np.float32)))
  # One sigmoid output: binary targets must be in [0, 1].
  bce = fnn.MLP((2, 3, 1), output="sigmoid", loss="binary_cross_entropy")
  with pytest.raises(ValueError, match=r"data.y: loss 'binary_cross_entropy' "
                     r"needs targets in \[0, 1\], got 2"):
    train.fit(bce, opt, train.init_state(bce, opt, jax.random.key(0)),
              ds._replace(y=np.where(np.arange(64) == 5, 2.0, ds.y)),
              epochs=1, batch_size=8)
  assert train.train_epoch._cache_size() == compiled  # nothing compiled


def _sgd_rates(opt, steps):
  """The learning rate of steps 0..steps-1: -update for a gradient of 1."""
  params = jnp.zeros(1, jnp.float32)
  update = jax.jit(opt.update)
  state, rates = opt.init(params), []
  for _ in range(steps):
    u, state = update(jnp.ones(1, jnp.float32), state, params)
    rates.append(-float(u[0]))
  return np.array(rates)


def _check_cosine(rates, lr, n):
  r"""``lr_k = lr (1 + cos(pi k / n)) / 2`` for ``k <= n``, then 0."""
  # float32 updates: lr (~0.1) to ~1e-7 relative.
  assert rates[0] == pytest.approx(lr, rel=1e-6)
  assert rates[n // 2] == pytest.approx(lr / 2, rel=1e-6)  # 2n: 0.85 lr
  assert rates[n - 1] == pytest.approx(
      lr * (1 + np.cos(np.pi * (n - 1) / n)) / 2, rel=1e-5)
  assert np.all(rates[:n] > 0)  # not 0 before step n ...
  assert np.all(rates[n:] == 0)  # ... and exactly 0 from step n on


def test_cosine_schedule_reaches_zero_at_total_steps():
  n, lr = 20, 0.1
  opt = train.make_optimizer("sgd", lr, schedule="cosine", total_steps=n)
  _check_cosine(_sgd_rates(opt, n + 3), lr, n)


def test_run_build_gives_the_cosine_schedule_the_run_length():
  from fnn import run
  ds = _toy("xor", 64)
  config = run.resolve_config(dict(dataset="xor", optimizer="sgd", lr=0.1,
                                   schedule="cosine", batch_size=16,
                                   epochs=3))
  _, opt, _ = run.build(config, ds)
  n = (64 // 16) * 3  # steps_per_epoch * epochs
  _check_cosine(_sgd_rates(opt, n + 3), 0.1, n)


def test_single_output_accuracy_thresholds_at_one_half():
  # sigmoid(w x + b) with w = 1, b = 0: outputs sigmoid(logit(p)) = p.
  model = fnn.MLP((1, 1), output="sigmoid", loss="binary_cross_entropy")
  params = (fnn.Dense(jnp.ones((1, 1)), jnp.zeros(1)),)
  p = np.array([0.55, 0.45, 0.52, 0.2, 0.9, 0.49])
  x = jnp.asarray(np.log(p / (1 - p))[:, None])
  y = jnp.asarray((p > 0.5).astype(np.float64))  # 0.55, 0.52 are class 1
  np.testing.assert_allclose(model.apply(params, x)[:, 0], p, rtol=1e-12)
  _, acc = train.evaluate(model, params, x, y)
  assert float(acc) == 1.0  # a threshold of 0.6 (or 0.4) would give 4/6
  _, acc = train.evaluate(model, params, x, 1 - y)
  assert float(acc) == 0.0


# ---------------------------------------------------------------- any network


def _mnist1d_shaped(n=48, seed=0):
  """Random float64 data of MNIST-1D's shape (40 features, 10 classes): the
  trajectories compare two gradient sources, not what they learn."""
  rng = np.random.default_rng(seed)
  return data.Dataset("random40", rng.normal(size=(n, 40)),
                      rng.integers(0, 10, n), rng.normal(size=(16, 40)),
                      rng.integers(0, 10, 16), 10)


SEQUENTIAL_RUNS = [
    # Default: the residual MLP with L2 and dropout (each pair of
    # compilations costs seconds, DP-SGD's the most: a Sequential trains
    # with DP-SGD in test_cli's run, and dp_grad is checked against its
    # materialized reference in test_layers). The others are slow.
    pytest.param("resmlp", train.StepConfig(weight_decay=1e-2, dropout=0.2),
                 id="resmlp-l2-dropout"),
    pytest.param("resmlp", train.StepConfig(weight_decay=1e-2, dropout=0.2,
                                            dp_clip=0.5, dp_noise=0.7),
                 id="resmlp-dp-l2-dropout", marks=pytest.mark.slow),
    pytest.param("cnn", train.StepConfig(weight_decay=1e-2, dropout=0.2),
                 id="cnn-l2-dropout", marks=pytest.mark.slow),
    pytest.param("cnn", train.StepConfig(weight_decay=1e-2, dropout=0.2,
                                         dp_clip=0.5, dp_noise=0.7),
                 id="cnn-dp-l2-dropout", marks=pytest.mark.slow),
    pytest.param("cnn", train.StepConfig(dropout=0.2, dp_clip=0.5,
                                         dp_noise=0.7, dp_sampling="shuffle"),
                 id="cnn-dp-shuffle", marks=pytest.mark.slow),
    pytest.param("dense:16,tanh,res(layernorm,dense:16,gelu)",
                 train.StepConfig(weight_decay=1e-2, dropout=0.2),
                 id="layernorm-spec", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,cfg", SEQUENTIAL_RUNS)
def test_sequential_hand_and_autodiff_give_the_same_trajectory(name, cfg):
  """float64: MNIST-1D's residual MLP and CNN (fnn.arch) trained by fit with
  the hand-derived gradient and with jax.grad agree to ~1e-12."""
  from fnn import arch
  ds = _mnist1d_shaped()
  model = arch.build(name, 40, 10)
  opt = train.make_optimizer("adamw", 1e-2, weight_decay=1e-2)
  # Jitted: op by op, every layer's init compiles its own ops (seconds).
  state = jax.jit(train.init_state, static_argnums=(0, 1, 3))(
      model, opt, jax.random.key(1), jnp.float64)
  hand, hist = train.fit(model, opt, state, ds, epochs=1, batch_size=16,
                         cfg=cfg)
  auto, auto_hist = train.fit(model, opt, state, ds, epochs=1, batch_size=16,
                              cfg=cfg._replace(grads="autodiff"))
  # 3 AdamW steps; Adam's normalization amplifies per-step rounding a little.
  chex.assert_trees_all_close(hand.params, auto.params, rtol=1e-9, atol=1e-11)
  assert jax.tree.structure(hand.params) == jax.tree.structure(state.params)
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), hand.params,
                       state.params)
  assert all(jax.tree.leaves(moved))  # every leaf trained
  assert hist[0]["step"] == 3 and np.isfinite(hist[0]["test_loss"])
  assert hist[0]["train_loss"] == pytest.approx(auto_hist[0]["train_loss"],
                                                rel=1e-9)
  assert 0.0 <= hist[0]["test_accuracy"] <= 1.0


def test_adamw_decays_every_weight_of_any_network():
  """The decoupled decay's mask: every ``w`` (Dense, Conv1d), not biases,
  not LayerNorm's scale and shift, whatever the nesting."""
  from fnn import arch
  from fnn import layers as L
  model = arch.build("conv1d:2:3,relu,layernorm,flatten,res(dense:76,tanh)",
                     40, 10)
  params = jax.eval_shape(model.init, jax.random.key(0))
  mask = train.decayed(params)
  assert mask[0] == L.ConvParams(True, False) and mask[1] == ()
  assert mask[2] == L.LayerNormParams(False, False)
  assert mask[4] == (fnn.Dense(True, False), ())
  assert mask[5] == fnn.Dense(True, False)


def test_init_state_and_check_data_with_a_sequential():
  from fnn import arch
  model = arch.build("resmlp", 40, 10)
  opt = train.make_optimizer("sgd", 0.1)
  state = jax.eval_shape(lambda k: train.init_state(model, opt, k,
                                                    jnp.float64),
                         jax.random.key(0))
  assert jax.tree.structure(state.params) == jax.tree.structure(
      jax.eval_shape(model.init, jax.random.key(0)))
  ds = _mnist1d_shaped()
  with pytest.raises(ValueError, match=r"data.x has shape \(48, 39\), the "
                     r"model expects \[n, 40\]"):
    train.check_data(model, ds._replace(x=ds.x[:, :39]))
  with pytest.raises(ValueError, match=r"data.y_test: class label 10 is "
                     r"outside \[0, 10\)"):
    train.check_data(model, ds._replace(y_test=ds.y_test * 0 + 10))
