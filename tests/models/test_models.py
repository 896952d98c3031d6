import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax.models import build_model, init_variables
from bigjax.models.layers import max_pool
from bigjax.registry import ConfigError
from bigjax.core.steps import count_params
from configs import mnist

MNIST_X = jnp.zeros((1, 28, 28, 1))


@pytest.mark.parametrize("variant,expected", [
    ("mlp", 101_770),     # 784*128+128 + 128*10+10
    ("mlp2", 109_386),    # + 128*64+64 + 64*10+10 - (128*10+10)
    ("mlp3", 242_762),
    ("cnn", 121_930),     # 320 + 18,496 + 102,464 + 650
])
def test_lesson_models_have_exact_parameter_counts(variant, expected):
  model = build_model(mnist.get_config(variant).model)
  assert count_params(init_variables(model, jax.random.PRNGKey(0), MNIST_X)["params"]) == expected


def test_init_is_a_pure_function_of_the_seed():
  model = build_model(mnist.get_config("cnn").model)
  a = init_variables(model, jax.random.PRNGKey(0), MNIST_X)
  b = init_variables(model, jax.random.PRNGKey(0), MNIST_X)
  c = init_variables(model, jax.random.PRNGKey(1), MNIST_X)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.allclose(a["params"]["conv_0"]["kernel"], c["params"]["conv_0"]["kernel"])


@pytest.mark.slow
def test_init_compiled_for_speed_draws_the_same_bits_for_every_initialiser():
  """init_variables compiles at a lower LLVM optimisation level on CPUs (3x faster for a
  ResNet); the draws must equal those of the default compile, for every initialiser and
  for the embeddings, norms and batch statistics of the shipped families."""
  from bigjax.models import INIT_COMPILER_OPTIONS
  from bigjax.models.initializers import _FACTORIES, get_initializer

  class EveryInitialiser(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      outs = [nn.Dense(37, kernel_init=get_initializer(name), name=name)(x).sum()
              for name in _FACTORIES]
      outs.append(nn.Dense(5, bias_init=get_initializer("normal"))(x).sum())
      conv = nn.Conv(8, (3, 3), kernel_init=get_initializer("he_normal"))(x[:, None, None, :])
      tokens = nn.Embed(50, 16)(jnp.zeros((1, 3), jnp.int32))
      return sum(outs) + conv.sum() + nn.LayerNorm()(tokens).sum()

  x = jnp.ones((1, 29))
  rngs = {"params": jax.random.PRNGKey(3), "dropout": jax.random.PRNGKey(4)}
  for model, example in ((EveryInitialiser(), x),
                         (build_model(dict(name="resnet", stage_sizes=(1, 1),
                                           stage_features=(4, 8), num_classes=3)),
                          jnp.zeros((1, 8, 8, 3)))):
    lowered = jax.jit(lambda r, v: model.init(r, v, train=False)).lower(rngs, example)
    fast = lowered.compile(compiler_options=INIT_COMPILER_OPTIONS)(rngs, example)
    default = lowered.compile()(rngs, example)
    jax.tree.map(np.testing.assert_array_equal, fast, default)


@pytest.mark.slow
def test_models_output_logits_per_class():
  for variant in ("mlp", "mlp3", "cnn"):
    model = build_model(mnist.get_config(variant).model)
    variables = init_variables(model, jax.random.PRNGKey(0), MNIST_X)
    x = jax.random.uniform(jax.random.PRNGKey(1), (7, 28, 28, 1))
    assert model.apply(variables, x, train=False).shape == (7, 10)


def test_dropout_only_in_training():
  model = build_model(dict(name="mlp", hidden_sizes=(64,), dropout_rate=0.5, num_classes=10))
  variables = init_variables(model, jax.random.PRNGKey(0), MNIST_X)
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
  eval_a = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(eval_a, model.apply(variables, x, train=False))
  train_a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  assert not np.allclose(eval_a, train_a)


@pytest.mark.slow
@pytest.mark.parametrize("window", [2, 3])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape", [(3, 26, 26, 8), (2, 11, 11, 4), (2, 7, 9, 3)])
def test_reshape_max_pool_equals_flax_max_pool(shape, ties, window):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  if ties:  # relu-like flat regions and repeated values, where "which maximum" matters
    x = jnp.maximum(jnp.round(x), 0.0)
  ref = lambda x: nn.max_pool(x, (window, window), (window, window), "VALID")
  np.testing.assert_array_equal(max_pool(x, window), ref(x))
  w = jax.random.normal(jax.random.PRNGKey(1), ref(x).shape)
  grad = jax.grad(lambda x: (max_pool(x, window) * w).sum())(x)
  grad_ref = jax.grad(lambda x: (ref(x) * w).sum())(x)
  assert np.abs(grad_ref).sum() > 0
  np.testing.assert_array_equal(grad, grad_ref)


def test_unknown_model_name_and_field():
  with pytest.raises(ConfigError, match='Unknown model "mpl".*Did you mean "mlp".*cnn, denoising_autoencoder, gpt, mae, mlp'):
    build_model(dict(name="mpl"))
  with pytest.raises(ConfigError, match=r"hiden_sizes.*Did you mean \"hidden_sizes\""):
    build_model(dict(name="mlp", hiden_sizes=(3,)))


def test_unknown_activation_lists_known():
  model = build_model(dict(name="mlp", activation="relu6x"))
  with pytest.raises(ConfigError, match="Unknown activation.*relu"):
    init_variables(model, jax.random.PRNGKey(0), MNIST_X)


def test_cnn_too_small_input_names_the_layer():
  model = build_model(dict(name="cnn", conv_features=(8, 8, 8, 8)))  # 28-26-13-11-5-3-1: no room for conv_3
  with pytest.raises(ValueError, match="conv_3.*1x1 input is smaller than the 3x3 kernel"):
    init_variables(model, jax.random.PRNGKey(0), MNIST_X)


# --- initialisers --------------------------------------------------------------------------

FAN_IN, FAN_OUT = 400, 600


@pytest.mark.parametrize("spec,expected_std", [
    ("normal:0.05", 0.05),
    ("truncated_normal:0.05", 0.05 * 0.87962566),  # a unit normal truncated at +-2
    ("uniform:0.3", 0.3 / np.sqrt(3)),
    ("xavier_normal", np.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("glorot_uniform", np.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("he_normal", np.sqrt(2 / FAN_IN)),
    ("kaiming_uniform", np.sqrt(2 / FAN_IN)),
    ("he_normal:0.5", np.sqrt(0.5 * 2 / FAN_IN)),
    ("lecun_normal", np.sqrt(1 / FAN_IN)),
    ("lecun_uniform", np.sqrt(1 / FAN_IN)),
    ("orthogonal", np.sqrt(1 / FAN_OUT)),  # orthonormal rows of length 1 over 600 entries
])
def test_initializer_std_matches_its_formula(spec, expected_std):
  from bigjax.models.initializers import get_initializer
  kernel = np.asarray(get_initializer(spec)(jax.random.PRNGKey(0), (FAN_IN, FAN_OUT)))
  assert kernel.std() == pytest.approx(expected_std, rel=0.01), spec
  assert abs(kernel.mean()) < 0.01 * expected_std + 1e-4


def test_orthogonal_zeros_and_ones():
  from bigjax.models.initializers import get_initializer
  q = np.asarray(get_initializer("orthogonal:2.0")(jax.random.PRNGKey(0), (64, 64)))
  np.testing.assert_allclose(q @ q.T, 4.0 * np.eye(64), atol=1e-4)
  assert not get_initializer("zeros")(jax.random.PRNGKey(0), (3, 3)).any()
  assert (get_initializer("ones")(jax.random.PRNGKey(0), (3, 3)) == 1).all()


def test_model_init_follows_the_config():
  config = mnist.get_config("mlp")
  with config.unlocked():
    config.model.kernel_init = "he_normal"
    config.model.bias_init = "normal:0.5"
  variables = init_variables(build_model(config.model), jax.random.PRNGKey(0),
                             jnp.zeros((1, 28, 28, 1)))
  kernel = variables["params"]["dense_0"]["kernel"]
  assert float(kernel.std()) == pytest.approx(np.sqrt(2 / 784), rel=0.02)
  assert float(variables["params"]["dense_0"]["bias"].std()) == pytest.approx(0.5, rel=0.2)
  # The default is Flax's own Dense default (LeCun normal, zero bias), draw for draw.
  from bigjax.models.initializers import get_initializer
  key = jax.random.PRNGKey(3)
  np.testing.assert_array_equal(get_initializer("lecun_normal")(key, (784, 128)),
                                nn.Dense(1).kernel_init(key, (784, 128)))


def test_unknown_initializer_lists_known_and_suggests():
  from bigjax.models.initializers import get_initializer
  with pytest.raises(ConfigError, match=r'Unknown initializer "he_norml".*Did you mean '
                                        r'"he_normal".*xavier_uniform'):
    get_initializer("he_norml")
  with pytest.raises(ConfigError, match="must be a number"):
    get_initializer("normal:big")
  config = mnist.get_config("cnn")
  with config.unlocked():
    config.model.kernel_init = "xavier"
  with pytest.raises(ConfigError, match='Unknown initializer "xavier"'):
    init_variables(build_model(config.model), jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))


@pytest.mark.slow
@pytest.mark.parametrize("model_config", [
    dict(name="mlp", hidden_sizes=(32,)),
    dict(name="cnn", conv_features=(8, 16), dense_sizes=(16,)),
    dict(name="vit", patch_size=4, hidden_size=32, depth=2, num_heads=4, mlp_ratio=2.0),
    dict(name="vit", patch_size=4, hidden_size=32, depth=1, num_heads=2, pool="mean"),
])
@pytest.mark.parametrize("shape", [(8, 28, 28, 1), (8, 32, 32, 3)])
def test_families_train_on_1_and_3_channel_images(model_config, shape):
  from bigjax.core import losses
  from bigjax.core.optimizers import build_optimizer
  from bigjax.core.steps import create_train_state, make_eval_step, make_train_step
  model = build_model(dict(model_config, num_classes=10))
  x = jax.random.uniform(jax.random.PRNGKey(0), shape)
  batch = {"image": x, "label": jnp.arange(shape[0]) % 10}
  tx = build_optimizer({"name": "adam", "learning_rate": 3e-3})
  state = create_train_state(init_variables(model, jax.random.PRNGKey(1), x[:1]), tx,
                             jax.random.PRNGKey(2))
  train_step = jax.jit(make_train_step(model, losses.softmax_cross_entropy, tx))
  eval_step = jax.jit(make_eval_step(model, losses.softmax_cross_entropy))
  before = float(eval_step(state, batch)["loss_sum"])
  for _ in range(5):
    state, _ = train_step(state, batch)
  assert float(eval_step(state, batch)["loss_sum"]) < before


def test_vit_bad_shapes_name_the_fix():
  for fields, message in [(dict(patch_size=3), "do not split into 3x3 patches"),
                          (dict(hidden_size=30, num_heads=4), "does not split into 4 heads"),
                          (dict(pool="max"), 'pool "max"')]:
    model = build_model(dict(name="vit", num_classes=10, **fields))
    with pytest.raises(ValueError, match=message):
      init_variables(model, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))


def test_mlp_norm_options():
  x = jnp.zeros((1, 28, 28, 1))
  batch = init_variables(build_model(dict(name="mlp", hidden_sizes=(16, 8), norm="batch")),
                         jax.random.PRNGKey(0), x)
  assert set(batch["batch_stats"]) == {"norm_0", "norm_1"}
  layer = init_variables(build_model(dict(name="mlp", hidden_sizes=(16,), norm="layer")),
                         jax.random.PRNGKey(0), x)
  assert set(layer["params"]["norm_0"]) == {"scale", "bias"} and "batch_stats" not in layer
  with pytest.raises(ValueError, match='norm "group"'):
    init_variables(build_model(dict(name="mlp", norm="group")), jax.random.PRNGKey(0), x)


def test_cnn_stack_described_per_layer():
  from bigjax.outputs import summary
  model = build_model(dict(name="cnn", conv_features=(8, 16, 16), kernel_size=(5, 3, 3),
                           strides=(1, 2, 1), padding=("SAME", "VALID", "SAME"),
                           pool_size=(2, 1, 2), norm="batch", dense_sizes=(), num_classes=10))
  x = jnp.zeros((1, 28, 28, 1))
  variables = init_variables(model, jax.random.PRNGKey(0), x)
  layers = {layer["path"]: layer for layer in summary.summarize(model, variables, x)["layers"]}
  assert layers["conv_0"]["output_shape"] == [28, 28, 8]   # SAME, stride 1; then pool -> 14
  assert layers["conv_1"]["output_shape"] == [6, 6, 16]    # VALID 3x3, stride 2: (14-3)//2+1
  assert layers["conv_2"]["output_shape"] == [6, 6, 16]    # SAME; then pool -> 3
  assert layers["head"]["input_shape"] == [3 * 3 * 16]
  assert layers["conv_0"]["trainable"] == 5 * 5 * 1 * 8 + 8
  assert layers["norm_1"]["non_trainable"] == 2 * 16
  with pytest.raises(ValueError, match="kernel_size has 2 entries for 3 layers"):
    init_variables(build_model(dict(name="cnn", conv_features=(8, 8, 8), kernel_size=(3, 3))),
                   jax.random.PRNGKey(0), x)


@pytest.mark.slow
def test_flat_dropout_equals_flax_dropout_bit_for_bit():
  """bigjax's Dropout draws its mask flat (faster to compile on CPUs): the same masks as
  nn.Dropout for the same keys, nothing dropped when deterministic or at rate 0."""
  from bigjax.models.layers import Dropout

  class Net(nn.Module):
    layer: type

    @nn.compact
    def __call__(self, x, deterministic=False):
      x = self.layer(0.3)(x, deterministic=deterministic)
      return self.layer(0.5)(nn.Dense(5)(x), deterministic=deterministic)

  x = jax.random.normal(jax.random.PRNGKey(0), (4, 6, 7))
  variables = Net(nn.Dropout).init(jax.random.PRNGKey(1), x, deterministic=True)
  run = lambda layer, **kw: Net(layer).apply(variables, x,
                                             rngs={"dropout": jax.random.PRNGKey(3)}, **kw)
  ours, ref = run(Dropout), run(nn.Dropout)
  np.testing.assert_array_equal(ours, ref)
  assert 0.3 < float((ours == 0).mean()) < 0.7  # something was dropped
  undropped = nn.Dense(5).apply({"params": variables["params"]["Dense_0"]}, x)
  np.testing.assert_array_equal(run(Dropout, deterministic=True), undropped)
  np.testing.assert_array_equal(Dropout(0.0).apply({}, x, deterministic=False), x)


def _loss_and_grads(model, variables, x, rng):
  def loss(params):
    out, _ = model.apply({**variables, "params": params}, x, train=True,
                         rngs={"dropout": rng}, mutable=["batch_stats"])
    return jnp.sum(out ** 2)
  return jax.value_and_grad(loss)(variables["params"])


@pytest.mark.slow
@pytest.mark.parametrize("model_config, shape", [
    (dict(name="cnn", conv_features=(4, 8), dense_sizes=(16,), norm="batch",
          dropout_rate=0.3, num_classes=3), (4, 12, 12, 1)),
    (dict(name="vit", patch_size=4, hidden_size=16, depth=1, num_heads=2, mlp_ratio=2.0,
          dropout_rate=0.2, num_classes=3), (4, 8, 8, 3)),
])
def test_stock_layers_off_the_cpu_compute_what_the_hand_written_kernels_do(
    model_config, shape, monkeypatch):
  """On GPUs and TPUs the models use Flax's stock computations (max_pool, nn.Dropout's
  draw, differentiating the normalisation), on CPUs bigjax's kernels: the same values and
  gradients either way, so the choice is only speed."""
  from bigjax.models import backend
  model = build_model(model_config)
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  variables = init_variables(model, jax.random.PRNGKey(1), x[:1])
  rng = jax.random.PRNGKey(2)
  assert backend.hand_written_kernels()  # (this suite runs on the CPU)
  program = lambda: str(jax.make_jaxpr(lambda v: _loss_and_grads(model, v, x, rng))(variables))
  cpu, cpu_program = _loss_and_grads(model, variables, x, rng), program()
  monkeypatch.setattr(backend, "hand_written_kernels", lambda: False)
  stock, stock_program = _loss_and_grads(model, variables, x, rng), program()
  assert stock_program != cpu_program  # (two computations: the switch takes effect)
  np.testing.assert_allclose(stock[0], cpu[0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               stock[1], cpu[1])


@pytest.mark.slow
def test_layer_norm_epsilon_and_gelu_form_are_model_fields():
  """GPT-2 uses LayerNorm epsilon 1e-5 and timm's ViT the exact (erf) GELU: each changes
  the outputs, and the exact GELU is erf's."""
  tokens = jnp.arange(16, dtype=jnp.int32)[None] % 7
  gpt = dict(name="gpt", vocab_size=16, context_length=16, hidden_size=16, depth=1,
             num_heads=2)
  variables = init_variables(build_model(gpt), jax.random.PRNGKey(0), tokens)
  # Random values everywhere (the init zeroes some projections, hiding the MLP).
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
  variables = jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) * 0.5
                                        for k, x in zip(keys, leaves)])
  out = {key: build_model({**gpt, **fields}).apply(variables, tokens)
         for key, fields in {"default": {}, "eps": {"norm_epsilon": 1e-5},
                             "exact": {"gelu_approximate": False}}.items()}
  for key in ("eps", "exact"):
    assert float(jnp.abs(out[key] - out["default"]).max()) > 1e-6, key
  from bigjax.models.vit import MlpBlock
  block = MlpBlock(hidden=8, gelu_approximate=False)
  y = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4))
  params = block.init(jax.random.PRNGKey(2), y)
  dense_0 = params["params"]["dense_0"]
  hidden = y @ dense_0["kernel"] + dense_0["bias"]
  from jax.scipy.special import erf
  exact = 0.5 * hidden * (1 + erf(hidden / np.sqrt(2.0)))
  dense_1 = params["params"]["dense_1"]
  np.testing.assert_allclose(block.apply(params, y), exact @ dense_1["kernel"] + dense_1["bias"],
                             rtol=1e-5, atol=1e-6)


def test_hand_written_kernels_follow_the_backend_unless_forced(monkeypatch):
  from bigjax.models import backend
  from bigjax.registry import ConfigError
  monkeypatch.delenv(backend.ENV_VAR, raising=False)
  assert backend.hand_written_kernels() == (jax.default_backend() == "cpu")
  monkeypatch.setenv(backend.ENV_VAR, "0")
  assert backend.hand_written_kernels() is False
  monkeypatch.setenv(backend.ENV_VAR, "1")
  assert backend.hand_written_kernels() is True
  monkeypatch.setenv(backend.ENV_VAR, "yes")
  with pytest.raises(ConfigError, match="BIGJAX_HAND_WRITTEN_KERNELS='yes'"):
    backend.hand_written_kernels()


BACKBONES = [dict(name="mlp", hidden_sizes=(32, 16)), dict(name="cnn"),
             dict(name="resnet", stage_sizes=(1,), stage_features=(8,)),
             dict(name="vit", patch_size=7, hidden_size=16, depth=1, num_heads=2)]


@pytest.mark.parametrize("backbone", BACKBONES, ids=lambda b: b["name"])
def test_num_classes_0_gives_the_features_the_head_would_read(backbone):
  classifier = build_model(backbone)
  variables = init_variables(classifier, jax.random.PRNGKey(0), MNIST_X)
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 28, 28, 1))
  features = classifier.clone(num_classes=0).apply(variables, x)
  head = variables["params"]["head"]
  np.testing.assert_allclose(features @ head["kernel"] + head["bias"],
                             classifier.apply(variables, x), atol=1e-5)


@pytest.mark.parametrize("backbone", BACKBONES, ids=lambda b: b["name"])
def test_a_projected_backbone_keeps_the_classifiers_parameter_names(backbone):
  projected = build_model(dict(name="projected", backbone=backbone, projection_sizes=(24, 8)))
  variables = init_variables(projected, jax.random.PRNGKey(0), MNIST_X)
  params = variables["params"]
  classifier = init_variables(build_model(backbone), jax.random.PRNGKey(0), MNIST_X)["params"]
  assert set(params) == (set(classifier) - {"head"}) | {"projection_0", "projection_1"}
  assert projected.apply(variables, jnp.zeros((5, 28, 28, 1))).shape == (5, 8)
  # Same shapes for every backbone weight: a fine-tune loads them all.
  shapes = lambda tree: jax.tree.map(jnp.shape, tree)
  assert shapes({k: v for k, v in params.items() if not k.startswith("projection_")}) == \
      shapes({k: v for k, v in classifier.items() if k != "head"})


def test_a_backbone_must_be_an_image_family_with_num_classes():
  with pytest.raises(ConfigError, match="needs a name"):
    init_variables(build_model(dict(name="projected", backbone=dict(hidden_sizes=(8,)))),
                   jax.random.PRNGKey(0), MNIST_X)
  with pytest.raises(ConfigError, match="is itself a pre-training wrapper"):
    init_variables(build_model(dict(name="projected", backbone=dict(name="projected"))),
                   jax.random.PRNGKey(0), MNIST_X)
  with pytest.raises(ConfigError, match="has no num_classes field"):
    init_variables(build_model(dict(name="projected", backbone=dict(name="gpt"))),
                   jax.random.PRNGKey(0), MNIST_X)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_mae_encoder_is_the_vit_and_hides_the_stated_share_of_patches(pool):
  encoder = dict(patch_size=4, hidden_size=16, depth=1, num_heads=2, pool=pool)
  mae = build_model(dict(name="mae", encoder=encoder, mask_ratio=0.75, decoder_size=8))
  variables = init_variables(mae, jax.random.PRNGKey(0), MNIST_X)
  vit = init_variables(build_model(dict(name="vit", **encoder)), jax.random.PRNGKey(0), MNIST_X)
  shapes = lambda tree: jax.tree.map(jnp.shape, tree)
  assert shapes({k: v for k, v in vit["params"].items() if k != "head"}) == shapes(
      {k: v for k, v in variables["params"].items()
       if not k.startswith(("decoder_", "mask_token"))})
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
  train = lambda key: mae.apply(variables, x, train=True, rngs={"dropout": key})
  out = train(jax.random.PRNGKey(2))
  assert out.shape == (4, 49, 4 * 4 * 1 + 1)
  np.testing.assert_array_equal(out[..., -1].sum(-1), 49 - 12)  # 12 of 49 stay visible
  assert not np.array_equal(out[..., -1], train(jax.random.PRNGKey(3))[..., -1])
  np.testing.assert_array_equal(mae.apply(variables, x)[..., -1],  # evaluation: a fixed mask
                                mae.apply(variables, 0.5 * x)[..., -1])
  with pytest.raises(ConfigError, match="mask_ratio must be in"):
    init_variables(build_model(dict(name="mae", encoder=encoder, mask_ratio=1.0)),
                   jax.random.PRNGKey(0), MNIST_X)
  with pytest.raises(ConfigError, match="config.model.encoder has keys.*'hidden'"):
    init_variables(build_model(dict(name="mae", encoder=dict(hidden=8))),
                   jax.random.PRNGKey(0), MNIST_X)
