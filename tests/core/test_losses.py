import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax.core import losses
from bigjax.core.optimizers import build_optimizer
from bigjax.registry import ConfigError


def test_softmax_cross_entropy_hand_computed():
  # softmax([0, ln 3]) = [1/4, 3/4]
  logits = jnp.array([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
  got = losses.softmax_cross_entropy(logits, {"label": jnp.array([1, 0])})
  np.testing.assert_allclose(got, [-math.log(0.75), -math.log(0.25)], rtol=1e-6)


def test_softmax_cross_entropy_one_hot_equals_integer_labels():
  logits = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
  labels = jnp.array([0, 3, 2, 1, 3])
  as_int = losses.softmax_cross_entropy(logits, {"label": labels})
  as_one_hot = losses.softmax_cross_entropy(logits, {"label": jax.nn.one_hot(labels, 4)})
  assert float(as_int.std()) > 0.01  # the examples really differ
  np.testing.assert_allclose(as_int, as_one_hot, rtol=1e-6)


@pytest.mark.parametrize("shape", [(6, 10), (3, 5, 256)])  # class logits; LM tokens
def test_integer_label_cross_entropy_equals_optax(shape):
  """The label's logit is picked by comparison (an elementwise gradient, not optax's gather
  and scatter-add): the same losses and gradients as optax's integer-label loss."""
  import optax
  logits = 4.0 * jax.random.normal(jax.random.PRNGKey(1), shape)
  labels = jax.random.randint(jax.random.PRNGKey(2), shape[:-1], 0, shape[-1])
  ours = lambda x: losses._integer_label_cross_entropy(x, labels)
  theirs = lambda x: optax.softmax_cross_entropy_with_integer_labels(x, labels)
  np.testing.assert_allclose(ours(logits), theirs(logits), rtol=1e-6, atol=1e-6)
  weights = jax.random.uniform(jax.random.PRNGKey(3), shape[:-1])
  grad = lambda f: jax.grad(lambda x: (f(x) * weights).sum())(logits)
  np.testing.assert_allclose(grad(ours), grad(theirs), rtol=1e-6, atol=1e-7)
  assert losses.token_cross_entropy(logits, {"label": labels}).shape == shape[:1]


def test_integer_label_cross_entropy_is_nan_for_a_label_out_of_range():
  got = losses.softmax_cross_entropy(jnp.zeros((3, 4)), {"label": jnp.array([0, 4, -1])})
  assert np.isfinite(got[0]) and np.isnan(got[1]) and np.isnan(got[2])


def test_mean_squared_error_hand_computed():
  got = losses.mean_squared_error(jnp.array([[1.0, 2.0], [0.0, 0.0]]),
                                  jnp.array([[1.0, 4.0], [3.0, -1.0]]))
  np.testing.assert_allclose(got, [2.0, 5.0])  # (0 + 4) / 2, (9 + 1) / 2


def test_mean_squared_error_loss_uses_one_hot_labels():
  outputs = jnp.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
  got = losses.LOSSES.get("mean_squared_error")(outputs, {"label": jnp.array([0, 2])})
  np.testing.assert_allclose(got, [0.0, (0.25 + 0.25 + 1.0) / 3], rtol=1e-6)


def test_lesson_worked_example_linear_regression():
  """y = theta*x + b, theta=1, b=0 on x=(2,4,6), y=(3,6,9); the lesson's arithmetic, corrected."""
  x, y = jnp.array([2.0, 4.0, 6.0]), jnp.array([3.0, 6.0, 9.0])
  params = {"theta": jnp.array(1.0), "b": jnp.array(0.0)}

  def cost(p):
    return losses.mean_squared_error((p["theta"] * x + p["b"])[:, None], y[:, None]).mean()

  value, grads = jax.value_and_grad(cost)(params)
  assert float(value) == pytest.approx(14 / 3, rel=1e-6)
  assert float(grads["theta"]) == pytest.approx(-56 / 3, rel=1e-6)
  assert float(grads["b"]) == pytest.approx(-4.0, rel=1e-6)

  tx = build_optimizer({"name": "sgd", "learning_rate": 0.1})
  updates, _ = tx.update(grads, tx.init(params), params)
  new = jax.tree.map(lambda p, u: p + u, params, updates)
  assert round(float(new["theta"]), 4) == 2.8667
  assert round(float(new["b"]), 4) == 0.4


def test_unknown_loss_lists_known_and_suggests():
  with pytest.raises(ConfigError) as e:
    losses.LOSSES.get("softmax_crossentropy")
  assert 'Did you mean "softmax_cross_entropy"' in str(e.value)
  assert "mean_squared_error" in str(e.value)


def test_unknown_optimizer_and_bad_arguments():
  with pytest.raises(ConfigError, match='Unknown optimizer "adma".*Did you mean "adam"'):
    build_optimizer({"name": "adma", "learning_rate": 1e-3})
  with pytest.raises(ConfigError, match=r"learning_rat.*Did you mean \"learning_rate\""):
    build_optimizer({"name": "adam", "learning_rat": 1e-3})


# --- the catalogue against hand-computed values -------------------------------------------

def test_label_smoothing_hand_computed():
  # softmax([ln 1, ln 3]) = [0.25, 0.75]; label 1 smoothed by 0.2 over 2 classes -> [0.1, 0.9]
  logits = jnp.log(jnp.array([[1.0, 3.0]]))
  value = losses.softmax_cross_entropy(logits, {"label": jnp.array([1])}, label_smoothing=0.2)
  expected = -(0.1 * math.log(0.25) + 0.9 * math.log(0.75))
  assert float(value[0]) == pytest.approx(expected, rel=1e-6)
  one_hot = losses.softmax_cross_entropy(logits, {"label": jnp.array([[0.0, 1.0]])},
                                         label_smoothing=0.2)
  assert float(one_hot[0]) == pytest.approx(expected, rel=1e-6)


def test_sigmoid_binary_cross_entropy_hand_computed():
  # sigmoid(0) = 0.5 with target 1; sigmoid(ln 3) = 0.75 with target 0; mean over classes
  logits = jnp.array([[0.0, math.log(3.0)]])
  value = losses.sigmoid_binary_cross_entropy(logits, {"label": jnp.array([[1.0, 0.0]])})
  assert float(value[0]) == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)


def test_multiclass_hinge_hand_computed():
  logits = jnp.array([[1.0, 3.0, 2.0]] * 3)
  value = losses.multiclass_hinge(logits, {"label": jnp.array([0, 1, 2])})
  # label 0: 1 + 3 - 1 = 3; label 1: 1 + 2 - 3 = 0; label 2: 1 + 3 - 2 = 2
  np.testing.assert_allclose(value, [3.0, 0.0, 2.0])
  wide = losses.multiclass_hinge(logits, {"label": jnp.array([1, 1, 1])}, margin=2.5)
  np.testing.assert_allclose(wide, [1.5] * 3)


def test_mean_absolute_error_hand_computed():
  outputs = jnp.array([[1.0, 2.0], [0.0, 0.0]])
  value = losses.mean_absolute_error_loss(outputs, {"target": jnp.array([[0.0, 4.0], [1.0, -1.0]])})
  np.testing.assert_allclose(value, [1.5, 1.0])


@pytest.mark.parametrize("name,kwargs", [("softmax_cross_entropy", {}),
                                         ("softmax_cross_entropy", {"label_smoothing": 0.1}),
                                         ("multiclass_hinge", {})])
def test_gradients_match_finite_differences(name, kwargs):
  # Points away from the hinge's kinks, where the loss is differentiable.
  logits = jnp.array([[0.3, -1.2, 2.0, 0.5], [1.0, 0.2, -0.4, 0.9]])
  batch = {"label": jnp.array([1, 3])}
  fn = losses.LOSSES.get(name)
  total = lambda z: fn(z, batch, **kwargs).sum()
  analytic = jax.grad(total)(logits)
  eps = 1e-2
  numeric = np.zeros(logits.shape)
  for index in np.ndindex(*logits.shape):
    step = jnp.zeros(logits.shape).at[index].set(eps)
    numeric[index] = (total(logits + step) - total(logits - step)) / (2 * eps)
  np.testing.assert_allclose(analytic, numeric, atol=2e-3)
  assert np.abs(analytic).sum() > 0.1  # not a vacuous comparison of zeros


def test_every_loss_is_per_example_and_jittable():
  logits = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
  # ("image": what an autoencoder reconstructs, shaped like its outputs; "partner": the
  # other view of each row, for the contrastive losses.)
  batch = {"label": jnp.array([0, 1, 2, 3, 0, 1]), "image": jnp.zeros((6, 4)),
           "partner": jnp.array([3, 4, 5, 0, 1, 2])}
  # (A masked autoencoder's outputs: 4 patches of 2x2 pixels of a 4x4 image, and the flag.)
  patches = {"masked_patch_mse": (jax.random.normal(jax.random.PRNGKey(1), (6, 4, 5)),
                                  dict(batch, image=jnp.ones((6, 4, 4, 1))))}
  for name in losses.LOSSES.names():
    outputs, inputs = patches.get(name, (logits, batch))
    value = jax.jit(losses.LOSSES.get(name))(outputs, inputs)
    assert value.shape == (6,) and bool(jnp.all(jnp.isfinite(value))), name


def test_lesson_linear_regression_converges_with_sgd():
  """The seed's example (x = 2, 4, 6; y = 3, 6, 9) trained with bigjax's SGD: theta=1.5, b=0."""
  x, y = jnp.array([2.0, 4.0, 6.0]), jnp.array([3.0, 6.0, 9.0])
  params = {"theta": jnp.array(1.0), "b": jnp.array(0.0)}
  tx = build_optimizer({"name": "sgd", "learning_rate": 0.04})

  def cost(p):
    return losses.mean_squared_error((p["theta"] * x + p["b"])[:, None], y[:, None]).mean()

  def step(carry, _):
    p, opt_state = carry
    updates, opt_state = tx.update(jax.grad(cost)(p), opt_state, p)
    return (jax.tree.map(jnp.add, p, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=3000)
  assert float(params["theta"]) == pytest.approx(1.5, abs=1e-4)
  assert float(params["b"]) == pytest.approx(0.0, abs=1e-4)
  assert float(cost(params)) < 1e-8


def test_loss_with_wrong_signature_fails_when_built():
  def needs_three(outputs, batch, temperature):
    return outputs.sum(-1)

  losses.register_loss("needs_three_for_test", overwrite=True)(needs_three)
  try:
    with pytest.raises(ConfigError, match=r'Loss "needs_three_for_test" cannot be called.*'
                                          r"temperature"):
      losses.build_loss({"name": "needs_three_for_test"})
  finally:
    losses.LOSSES.unregister("needs_three_for_test")
  with pytest.raises(ConfigError, match=r"\['margn'\].*Did you mean \"margin\""):
    losses.build_loss({"name": "multiclass_hinge", "margn": 2.0})


def test_dotted_path_that_does_not_import_names_path_and_reason():
  with pytest.raises(ConfigError, match=r'"nosuchpkg.losses:focal".*module "nosuchpkg.losses" '
                                        r"failed to import"):
    losses.build_loss({"name": "nosuchpkg.losses:focal"})
  with pytest.raises(ConfigError, match=r'has no attribute "softmax_cross_entropi".*Did you mean '
                                        r'"softmax_cross_entropy"'):
    losses.build_loss({"name": "bigjax.core.losses:softmax_cross_entropi"})


def _two_views(n=4, d=6, seed=0):
  z = np.random.default_rng(seed).normal(size=(2 * n, d)).astype(np.float32)
  partner = np.concatenate([np.arange(n, 2 * n), np.arange(n)]).astype(np.int32)
  return z, partner


def test_nt_xent_equals_the_papers_formula_computed_by_hand():
  z, partner = _two_views()
  got = np.asarray(losses.nt_xent(jnp.asarray(z), {"partner": jnp.asarray(partner)},
                                  temperature=0.3))
  unit = z / np.linalg.norm(z, axis=1, keepdims=True)
  expected = []
  for i in range(len(z)):
    sims = np.exp(unit @ unit[i] / 0.3)
    expected.append(-np.log(sims[partner[i]] / (sims.sum() - sims[i])))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_nt_xent_is_low_when_views_agree_and_others_differ():
  n = 4
  distinct = np.eye(2 * n, dtype=np.float32)[:n] * 5  # n orthogonal directions
  agree = np.concatenate([distinct, distinct])
  _, partner = _two_views(n)
  batch = {"partner": jnp.asarray(partner)}
  low = float(losses.nt_xent(jnp.asarray(agree), batch, temperature=0.1).mean())
  swapped = np.concatenate([distinct, distinct[::-1]])  # each view's partner points elsewhere
  high = float(losses.nt_xent(jnp.asarray(swapped), batch, temperature=0.1).mean())
  assert low < 1e-3 < 5 < high
  # The scale of an embedding does not matter (cosine similarity).
  z, _ = _two_views(n)
  np.testing.assert_allclose(losses.nt_xent(jnp.asarray(z), batch),
                             losses.nt_xent(jnp.asarray(3 * z), batch), rtol=1e-5)


def test_vicreg_terms_computed_by_hand():
  z, partner = _two_views(n=5, d=3, seed=1)
  got = np.asarray(losses.vicreg(jnp.asarray(z), {"partner": jnp.asarray(partner)},
                                 invariance=2.0, variance=3.0, covariance=0.5))
  expected_batch = 0.0
  for view in (z[:5], z[5:]):
    std = np.sqrt(view.var(0, ddof=1) + 1e-4)
    cov = np.cov(view, rowvar=False)
    expected_batch += (3.0 * np.maximum(1 - std, 0).mean()
                       + 0.5 * (np.square(cov).sum() - np.square(np.diag(cov)).sum()) / 3) / 2
  expected = 2.0 * np.square(z - z[partner]).mean(-1) + expected_batch
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_contrastive_losses_need_two_views_and_say_so():
  z, _ = _two_views()
  for name in ("nt_xent", "vicreg"):
    with pytest.raises(ConfigError, match="augment.views=2"):
      losses.LOSSES.get(name)(jnp.asarray(z), {"label": jnp.zeros(8, jnp.int32)})
    built = losses.build_loss(dict(name=name))
    assert built.compares_embeddings and built.gathers_across_devices


def test_masked_patch_mse_scores_hidden_patches_only():
  from bigjax.models.mae import patchify
  image = np.random.default_rng(0).random((1, 4, 4, 2)).astype(np.float32)
  patches = np.asarray(patchify(jnp.asarray(image), 2))  # 4 patches of 2x2x2
  np.testing.assert_array_equal(patches[0, 1], image[0, 0:2, 2:4].reshape(-1))  # row-major
  hidden = np.array([[1, 0, 1, 0]], np.float32)
  prediction = patches.copy()
  prediction[0, 0] += 0.5              # a hidden patch, off by 0.5 everywhere
  prediction[0, 1] += 3.0              # a visible patch: not scored
  outputs = jnp.asarray(np.concatenate([prediction, hidden[..., None]], -1))
  got = losses.LOSSES.get("masked_patch_mse")(outputs, {"image": jnp.asarray(image)},
                                                normalize_patches=False)
  np.testing.assert_allclose(got, [0.25 / 2], rtol=1e-6)  # (0.25 + 0) over 2 hidden patches
  normalized = losses.LOSSES.get("masked_patch_mse")(outputs, {"image": jnp.asarray(image)})
  target = (patches - patches.mean(-1, keepdims=True)) / np.sqrt(
      patches.var(-1, keepdims=True) + 1e-6)
  expected = (np.square(prediction - target).mean(-1) * hidden).sum() / 2
  np.testing.assert_allclose(normalized, [expected], rtol=1e-5)
