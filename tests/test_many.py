"""fnn.fit_many: K runs in one program equal K runs trained alone (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import data, many, train

N, BATCH, EPOCHS = 64, 16, 2
STEPS = EPOCHS * (N // BATCH)


def _data(n_in=5, classes=3):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, n_in))
  y = rng.integers(0, classes, N)
  return data.Dataset("toy", x, y, x[:16], y[:16], classes)


def _alone(model, name, key, ds, run, schedule, dp_sampling="poisson"):
  r"""The same run trained alone by fnn.fit, as ``fnn train`` builds it."""
  decoupled = name == "adamw"
  opt = train.make_optimizer(name, run["lr"], schedule=schedule,
                             total_steps=STEPS,
                             weight_decay=run["weight_decay"] if decoupled
                             else 0.0)
  cfg = train.StepConfig(
      weight_decay=0.0 if decoupled else run["weight_decay"],
      dropout=run["dropout"], dp_clip=run["dp_clip"],
      dp_noise=run["dp_noise"], dp_sampling=dp_sampling)
  state = train.init_state(model, opt, key, jnp.float64)
  return train.fit(model, opt, state, ds, epochs=EPOCHS, batch_size=BATCH,
                   cfg=cfg)


def _check_equal_alone(model, name, values, schedule="constant",
                       dp_sampling="poisson", ds=None):
  ds = _data() if ds is None else ds
  keys = [jax.random.key(s) for s in (3, 4)]
  h = many.hyper(2, **values)
  states = fnn.init_many(model, name, keys, jnp.float64, schedule=schedule,
                         total_steps=STEPS)
  states, hist = fnn.fit_many(
      model, name, states, ds, epochs=EPOCHS, batch_size=BATCH, hyper=h,
      schedule=schedule, cfg=train.StepConfig(dp_sampling=dp_sampling))
  assert [m["epoch"] for m in hist] == list(range(1, EPOCHS + 1))
  for k in range(2):
    state, alone = _alone(model, name, keys[k], ds, h.run(k), schedule,
                          dp_sampling)
    # Per-run values enter as arrays, not Python floats: equal to rounding.
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(
        many.unstack(states, k))):
      if jnp.issubdtype(a.dtype, jnp.floating):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
      elif not jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        np.testing.assert_array_equal(b, a)
    assert jnp.array_equal(jax.random.key_data(state.key),
                           jax.random.key_data(many.unstack(states.key, k)))
    for field in ("train_loss", "test_loss", "test_accuracy"):
      np.testing.assert_allclose([m[field][k] for m in hist],
                                 [m[field] for m in alone], rtol=1e-12)
  return states, hist


def test_sgd_dp_noise_per_run_equals_runs_alone():
  _check_equal_alone(fnn.MLP((5, 7, 3)), "sgd",
                     dict(lr=[0.1, 0.05], dp_clip=[1.0, 0.5],
                          dp_noise=[0.0, 1.0]), schedule="cosine")


@pytest.mark.slow  # sgd and adamw run by default; -m slow adds the rest
def test_momentum_dropout_l2_grid_equals_runs_alone():
  # run 0 has neither dropout nor L2: masks of ones and + 0 equal none.
  _check_equal_alone(fnn.MLP((5, 7, 6, 3), activation="tanh"), "momentum",
                     dict(lr=0.05, weight_decay=[0.0, 0.01],
                          dropout=[0.0, 0.3]))


@pytest.mark.slow  # sgd and adamw run by default; -m slow adds the rest
def test_adam_dp_shuffle_equals_runs_alone():
  _check_equal_alone(fnn.MLP((5, 7, 3)), "adam",
                     dict(lr=[1e-2, 3e-3], dp_clip=0.7, dp_noise=[0.5, 1.5]),
                     dp_sampling="shuffle")


def test_adamw_decay_and_dropout_on_a_sequential_equal_runs_alone():
  model = fnn.Sequential(
      (5,), [fnn.layers.Dense(6), fnn.layers.LayerNorm(),
       fnn.layers.Activation("relu"),
       fnn.layers.Residual(fnn.layers.Dense(6), fnn.layers.Activation("tanh")),
       fnn.layers.Dense(3)])
  _check_equal_alone(model, "adamw", dict(lr=[1e-2, 2e-2],
                                          weight_decay=[0.0, 0.1],
                                          dropout=[0.2, 0.1]),
                     schedule="cosine")


def test_one_compilation_serves_every_grid_of_one_shape():
  ds = _data()
  model = fnn.MLP((5, 4, 3))
  keys = [jax.random.key(s) for s in range(3)]
  before = many.train_epoch_many._cache_size()
  for lr in ([0.1, 0.2, 0.3], [1e-3, 1e-2, 5e-2]):
    states = fnn.init_many(model, "sgd", keys, jnp.float64)
    fnn.fit_many(model, "sgd", states, ds, epochs=1, batch_size=BATCH,
                 hyper=many.hyper(3, lr=lr, dropout=[0.0, 0.1, 0.2]))
  assert many.train_epoch_many._cache_size() == before + 1


def test_a_diverged_run_keeps_its_last_good_state_and_the_others_go_on():
  ds = _data()
  model = fnn.MLP((5, 7, 3))
  keys = [jax.random.key(s) for s in range(2)]
  states0 = fnn.init_many(model, "sgd", keys, jnp.float64)
  h = many.hyper(2, lr=[0.05, 1e30])
  states, hist = fnn.fit_many(model, "sgd", states0, ds, epochs=3,
                              batch_size=BATCH, hyper=h)
  assert hist[-1]["diverged"][0] is None and hist[-1]["diverged"][1] >= 1
  assert np.isnan(hist[-1]["train_loss"][1])
  assert np.isfinite(hist[-1]["train_loss"][0])
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(
      many.unstack(states.params, 1)))
  assert int(states.step[0]) == 3 * (N // BATCH)
  assert int(states.step[1]) == (hist[-1]["diverged"][1] - 1) * (N // BATCH)


def test_validation_metrics_per_run():
  ds = _data()
  ds = ds._replace(x=ds.x[16:], y=ds.y[16:]) if not hasattr(
      ds, "x_val") else ds._replace(x=ds.x[16:], y=ds.y[16:], x_val=ds.x[:16],
                                    y_val=ds.y[:16])
  if not hasattr(ds, "x_val"):
    pytest.skip("Dataset has no validation split yet")
  model = fnn.MLP((5, 4, 3))
  states = fnn.init_many(model, "adam", [jax.random.key(0),
                                         jax.random.key(1)], jnp.float64)
  states, hist = fnn.fit_many(model, "adam", states, ds, epochs=1,
                              batch_size=BATCH, hyper=many.hyper(2, lr=1e-2))
  for k in range(2):
    loss, acc = train.evaluate(model, many.unstack(states.params, k),
                               ds.x_val, ds.y_val)
    np.testing.assert_allclose(hist[-1]["val_loss"][k], loss, rtol=1e-12)
    assert hist[-1]["val_accuracy"][k] == float(acc)


@pytest.mark.parametrize("values, match", [
    (dict(lr=[0.1]), "lr has 1 values for 2 runs"),
    (dict(lr=0.0), "lr must be > 0, got 0"),
    (dict(lr=0.1, dropout=1.0), r"dropout must be in \[0, 1\), got 1"),
    (dict(lr=0.1, weight_decay=-1), "weight_decay must be >= 0, got -1"),
    (dict(lr=0.1, dp_clip=[1.0, 0.0]), "DP-SGD is all runs or none"),
    (dict(lr=0.1, dp_noise=1.0), "dp_noise 1 needs a clipping norm"),
    (dict(lr=float("nan")), "lr must be finite, got nan"),
])
def test_hyper_refuses_bad_values(values, match):
  with pytest.raises(ValueError, match=match):
    many.hyper(2, **values)


def test_hyper_refuses_non_numbers_and_fit_many_mismatched_runs():
  with pytest.raises(TypeError, match="lr must be a real number, got '0.1'"):
    many.hyper(2, lr="0.1")
  with pytest.raises(TypeError, match="dropout must be a real number, got "
                     "True"):
    many.hyper(2, lr=0.1, dropout=True)
  model = fnn.MLP((5, 4, 3))
  states = fnn.init_many(model, "sgd", [jax.random.key(0)], jnp.float64)
  with pytest.raises(ValueError, match="states hold 1 runs .* and hyper 2"):
    fnn.fit_many(model, "sgd", states, _data(), epochs=1, batch_size=BATCH,
                 hyper=many.hyper(2, lr=0.1))
  with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
    fnn.fit_many(model, "lion", states, _data(), epochs=1, batch_size=BATCH,
                 hyper=many.hyper(1, lr=0.1))
  with pytest.raises(TypeError, match="hyper must be a fnn.many.Hyper"):
    fnn.fit_many(model, "sgd", states, _data(), epochs=1, batch_size=BATCH,
                 hyper=dict(lr=0.1))
