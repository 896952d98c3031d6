"""Run by tests/sharding/test_parallel.py in a fresh process with 8 fake CPU devices (the flag must
be set before JAX starts). Prints one JSON line of findings."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bigjax import train
from bigjax.training import checkpoint
from bigjax.training.programs import Programs
from configs import digits  # noqa: E402


def config(**parallel):
  c = digits.get_config()
  with c.unlocked():
    c.train.num_steps = 20
    c.train.steps_per_call = 1
    c.report.plots = c.report.html = c.report.tensorboard = False
    c.eval.every_epoch = ""
    c.train.update(parallel.pop("train", {}))
    precision = parallel.pop("precision", None)
    if precision:
      c.precision.compute_dtype = precision
    mesh = parallel.pop("mesh", None)
    if mesh:
      c.parallel.mesh = mesh
    c.parallel.update(parallel)
  return c


params_of = checkpoint.latest_params


def max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main(root):
  out = {"devices": jax.device_count()}
  runs = {"one": config(num_devices=1), "jit8": config(), "pmap8": config(mode="pmap"),
          "fsdp": config(mesh=dict(data=2, fsdp=4), fsdp_min_size=1000)}
  params = {}
  for name, c in runs.items():
    results = train.run(c, os.path.join(root, name))
    out[f"{name}_test_loss"] = results["test_loss"]
    out[f"{name}_steps"], params[name] = params_of(os.path.join(root, name))
  for name in ("jit8", "pmap8", "fsdp"):
    out[f"{name}_vs_one"] = max_diff(params["one"], params[name])
  out["first_kernel_change"] = max_diff(params["one"], Programs(runs["one"]).initial_state.params)

  setup = Programs(runs["fsdp"])
  specs = {jax.tree_util.keystr(p): str(leaf.sharding.spec) for p, leaf in
           jax.tree_util.tree_leaves_with_path(setup.initial_state.params)}
  out["fsdp_specs"] = specs
  out["jit8_batch_devices"] = len(Programs(runs["jit8"]).batch_sharding.device_set)

  # Gradient accumulation under pmap (2 micro-batches per device) equals it on one device.
  for name, c in (("accum_one", config(num_devices=1, train=dict(grad_accum_steps=2))),
                  ("accum_pmap8", config(mode="pmap", train=dict(grad_accum_steps=2)))):
    train.run(c, os.path.join(root, name))
    _, params[name] = params_of(os.path.join(root, name))
  out["accum_pmap8_vs_one"] = max_diff(params["accum_one"], params["accum_pmap8"])

  # A checkpoint saved on 8 devices resumes on 1, and one saved on 1 resumes on 8.
  for first, then, name in ((config(), config(num_devices=1), "8to1"),
                            (config(num_devices=1), config(), "1to8")):
    workdir = os.path.join(root, name)
    train.run(first, workdir)
    with then.unlocked():
      then.train.num_steps = 40
    resumed = train.run(then, workdir)
    out[f"resume_{name}"] = [resumed["resumed_from_step"], resumed["steps"]]
    # ...to the same parameters as 40 steps without the move (on the second's devices).
    straight_dir = os.path.join(root, name + "_straight")
    out[f"resume_{name}_straight_test_loss"] = train.run(then, straight_dir)["test_loss"]
    out[f"resume_{name}_vs_straight"] = max_diff(params_of(workdir)[1],
                                                 params_of(straight_dir)[1])

  # A small GPT on a text file: FSDP over 2 x 4 devices equals one device.
  from configs import lm_tiny
  corpus = os.path.join(root, "corpus.txt")
  with open(corpus, "w") as f:
    f.write("the quick brown fox jumps over the lazy dog. " * 100)
  lm = {}
  for name, parallel in (("lm_one", dict(num_devices=1)),
                         ("lm_fsdp", dict(mesh=dict(data=2, fsdp=4), fsdp_min_size=500))):
    c = lm_tiny.get_config("small")
    with c.unlocked():
      c.data.path = corpus
      c.train.num_steps = 10
      c.report.plots = c.report.html = c.report.tensorboard = False
      c.parallel.update(parallel)
    train.run(c, os.path.join(root, name))
    _, lm[name] = params_of(os.path.join(root, name))
  out["lm_fsdp_vs_one"] = max_diff(lm["lm_one"], lm["lm_fsdp"])
  out["lm_fsdp_split"] = sum(
      1 for leaf in jax.tree.leaves(Programs(c).initial_state.params)
      if any(axis is not None for axis in leaf.sharding.spec))

  bf16 = train.run(config(precision="bfloat16"), os.path.join(root, "bf16"))
  _, bf16_params = params_of(os.path.join(root, "bf16"))
  out["bf16_param_dtypes"] = sorted({str(x.dtype) for x in jax.tree.leaves(bf16_params)})
  out["bf16_test_loss"] = bf16["test_loss"]
  out["bf16_vs_one"] = max_diff(params["one"], bf16_params)
  # How far each layer's kernel moved in float32: a bfloat16 run that trains the same model
  # moves every layer about as far (an input of 0 would leave the first layer in place).
  init = Programs(runs["one"]).initial_state.params
  out["one_kernel_moves"] = {name: max_diff(params["one"][name]["kernel"],
                                            init[name]["kernel"]) for name in params["one"]}
  out["bf16_kernel_moves"] = {name: max_diff(bf16_params[name]["kernel"],
                                             init[name]["kernel"]) for name in bf16_params}
  out.update(pmap_batch_norm())
  out.update(contrastive_negatives())
  # A SimCLR run sharded over 8 devices (jit: the global batch's negatives) = one device.
  simclr = {}
  for name, parallel in (("simclr_one", dict(num_devices=1)), ("simclr_jit8", {})):
    c = config(**parallel)
    with c.unlocked():
      c.model = dict(name="projected", backbone=dict(c.model), projection_sizes=(32, 16))
      c.loss = dict(name="nt_xent", temperature=0.2, l1=0.0, l2=0.0, penalty_mask="kernel")
      c.data.augment.update(views=2, resized_crop=0.3, flip_lr=True, brightness=0.4)
      c.train.num_steps = 10
      c.eval.at_end = ""
      c.checkpoint.best_metric = ""
    train.run(c, os.path.join(root, name))
    _, simclr[name] = params_of(os.path.join(root, name))
  out["simclr_jit8_vs_one"] = max_diff(simclr["simclr_one"], simclr["simclr_jit8"])
  print("RESULT " + json.dumps(out))


def contrastive_negatives() -> dict:
  """One SGD step with each contrastive loss: pmap over 8 devices (each holding [view 0;
  view 1] of its share, negatives gathered from every device) against one device holding
  the whole batch; and the per-row losses of both."""
  import functools
  import flax.linen as nn
  import optax
  from bigjax.core import losses, steps

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      return nn.Dense(8)(nn.tanh(nn.Dense(16)(x)))

  model, n, b = Net(), jax.device_count(), 3
  rng = np.random.default_rng(1)
  x = rng.normal(size=(n, 2 * b, 5)).astype(np.float32)   # per device: [view 0; view 1]
  local_partner = np.concatenate([np.arange(b, 2 * b), np.arange(b)]).astype(np.int32)
  partner = np.tile(local_partner, (n, 1))
  tx = optax.sgd(0.5)
  state = steps.create_train_state(model.init(jax.random.key(0), x[0]), tx,
                                   jax.random.PRNGKey(1))
  replicated = jax.tree.map(lambda a: np.broadcast_to(a, (n, *np.shape(a))), state)
  out = {}
  for name in ("nt_xent", "vicreg"):
    loss_fn = losses.LOSSES.get(name)
    gathered = functools.update_wrapper(functools.partial(loss_fn, axis_name="batch"), loss_fn)
    pmapped = jax.pmap(steps.make_train_step(model, gathered, tx, axis_name="batch"),
                       axis_name="batch")
    new, metrics = pmapped(replicated, {"image": x, "label": partner, "partner": partner})
    # The one-device batch: every device's view 0, then every device's view 1 (two_views'
    # layout for the global batch), partners b * n apart.
    whole = np.concatenate([x[:, :b].reshape(-1, 5), x[:, b:].reshape(-1, 5)])
    whole_partner = np.concatenate([np.arange(n * b, 2 * n * b), np.arange(n * b)])
    one_new, one_metrics = jax.jit(steps.make_train_step(model, loss_fn, tx))(
        state, {"image": whole, "label": whole_partner, "partner": whole_partner})
    out[f"{name}_pmap_vs_one_params"] = max_diff(jax.tree.map(lambda a: a[0], new.params),
                                                 one_new.params)
    out[f"{name}_pmap_vs_one_loss"] = abs(float(metrics["loss"][0]) - float(one_metrics["loss"]))
    out[f"{name}_step_moves"] = max_diff(one_new.params, state.params)
    out[f"{name}_has_accuracy"] = "accuracy" in one_metrics
  return out


def pmap_batch_norm() -> dict:
  """One pmap'd train step of a BatchNorm model: each device normalises by its own share's
  statistics, the running statistics are then averaged over devices (so every device holds
  the same ones), and the gradient is the global batch's. The references are 8 one-device
  steps, one per share."""
  import flax.linen as nn
  import optax
  from bigjax.core import losses, steps

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      x = nn.Dense(16)(x.reshape(x.shape[0], -1))
      x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
      return nn.Dense(3)(nn.relu(x))

  model, n = Net(), jax.device_count()
  rng = np.random.default_rng(0)
  # Each share has its own offset, so per-share statistics differ from the global batch's.
  x = (rng.normal(size=(n, 4, 5)) + np.arange(n)[:, None, None]).astype(np.float32)
  y = rng.integers(0, 3, size=(n, 4)).astype(np.int32)
  variables = model.init(jax.random.key(0), x[0], train=False)
  tx = optax.sgd(0.1)
  state = steps.create_train_state(variables, tx, jax.random.PRNGKey(1))
  loss_fn = losses.LOSSES.get("softmax_cross_entropy")
  pmapped = jax.pmap(steps.make_train_step(model, loss_fn, tx, axis_name="batch"),
                     axis_name="batch")
  replicated = jax.tree.map(lambda a: np.broadcast_to(a, (n, *np.shape(a))), state)
  new, _ = pmapped(replicated, {"image": x, "label": y})
  one = jax.jit(steps.make_train_step(model, loss_fn, tx))
  per_share = [one(state, {"image": x[i], "label": y[i]})[0] for i in range(n)]
  stats = new.model_state["batch_stats"]
  expected_stats = jax.tree.map(lambda *s: np.mean(s, axis=0),
                                *[s.model_state["batch_stats"] for s in per_share])
  # SGD: the global update is the mean of the shares' updates (equal weights per share).
  expected_params = jax.tree.map(lambda *p: np.mean(p, axis=0),
                                 *[s.params for s in per_share])
  stats_leaves = jax.tree.leaves(stats)
  return {
      "bn_devices_agree": max(float(np.max(np.abs(leaf - leaf[0]))) for leaf in stats_leaves),
      "bn_stats_vs_mean_of_shares": max_diff(jax.tree.map(lambda a: a[0], stats),
                                             expected_stats),
      "bn_stats_spread_of_shares": max_diff(per_share[0].model_state["batch_stats"],
                                            expected_stats),
      "bn_params_vs_mean_of_shares": max_diff(jax.tree.map(lambda a: a[0], new.params),
                                              expected_params),
  }


if __name__ == "__main__":
  # (Read when JAX first touches the devices, which is after this.)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8")
  main(sys.argv[1])
