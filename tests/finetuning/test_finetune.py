"""Fine-tuning (init_from, freezing, learning-rate factors) and checkpoints that survive
signals, kill -9 and damage."""

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from bigjax import train
from bigjax.finetuning import finetune
from bigjax.training import checkpoint
from bigjax.training.programs import Programs
from bigjax.registry import ConfigError
from configs import digits

from conftest import REPO_ROOT


def _config(**overrides):
  config = digits.get_config()
  with config.unlocked():
    config.train.num_epochs = 3
    config.report.plots = False
    config.report.html = False
    config.checkpoint.min_interval_seconds = 0.0  # these tests look at every epoch's save
    config.update_from_flattened_dict(overrides)
  return config


def _params(workdir, step=None):
  manager = checkpoint.make_manager(str(workdir), create=False)
  step = step or manager.latest_step()
  restored = manager.restore(step, args=checkpoint.ocp.args.Composite(
      state=checkpoint.ocp.args.StandardRestore()))["state"]
  manager.close()
  return restored


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pretrained")
  train.run(_config(), str(workdir))
  return workdir


# ------------------------------------------------------------------ init_from


def test_plan_statuses_against_a_literal_expectation():
  source = {"dense_0/kernel": np.zeros((64, 128)), "dense_0/bias": np.zeros(128),
            "head/kernel": np.zeros((128, 5)), "decoder/kernel": np.zeros((128, 64))}
  target = {"dense_0/kernel": np.zeros((64, 128)), "dense_0/bias": np.zeros(128),
            "head/kernel": np.zeros((128, 10)), "extra/bias": np.zeros(3)}
  rows = finetune.plan(source, target)
  assert {r.path: r.status for r in rows} == {
      "decoder/kernel": "unused", "dense_0/bias": "loaded", "dense_0/kernel": "loaded",
      "extra/bias": "missing", "head/kernel": "shape-mismatched"}
  rows = finetune.plan(source, target, skip="^(decoder|extra)/", reinit_mismatched="^head/")
  assert {r.path: r.status for r in rows} == {
      "decoder/kernel": "unused", "dense_0/bias": "loaded", "dense_0/kernel": "loaded",
      "extra/bias": "re-initialised", "head/kernel": "re-initialised"}


@pytest.mark.slow
def test_init_from_loads_params_and_reinitialises_a_skipped_head(pretrained, tmp_path):
  config = _config(**{"init_from.path": str(pretrained), "init_from.skip": "^head/"})
  setup = Programs(config)
  state, text = finetune.load(setup.initial_state, finetune.read(str(pretrained)),
                              config.init_from)
  source = _params(pretrained)["params"]
  np.testing.assert_array_equal(state.params["dense_0"]["kernel"], source["dense_0"]["kernel"])
  np.testing.assert_array_equal(state.params["head"]["kernel"],
                                setup.initial_state.params["head"]["kernel"])
  assert "2 loaded, 2 re-initialised" in text and "skipped by init_from.skip" in text

  # Through the driver: the table is logged and written, and training starts from step 0.
  results = train.run(config, str(tmp_path))
  assert results["resumed_from_step"] is None and results["steps"] == 3 * 40
  assert "head/kernel" in (tmp_path / "init_from.txt").read_text()


def test_strict_loading_names_every_mismatched_path(pretrained):
  config = _config(**{"init_from.path": str(pretrained), "model.hidden_sizes": (32,)})
  setup = Programs(config)
  with pytest.raises(ConfigError) as error:
    finetune.load(setup.initial_state, finetune.read(str(pretrained)), config.init_from)
  message = str(error.value)
  assert "dense_0/kernel: shape-mismatched (checkpoint (64, 128), this model (64, 32))" in message
  assert "head/kernel: shape-mismatched (checkpoint (128, 10), this model (32, 10))" in message
  assert "dense_0/bias" in message and "config.init_from.skip" in message


def test_non_strict_loading_takes_what_fits_and_best_picks_the_best_checkpoint(pretrained):
  """strict=False: a deeper model (784-128-64-10 from 784-128-10) loads dense_0 and
  re-initialises the new layer and the reshaped head kernel; step=best reads
  checkpoints_best."""
  config = _config(**{"init_from.path": str(pretrained), "model.hidden_sizes": (128, 64),
                      "init_from.strict": False, "init_from.step": "best"})
  programs = Programs(config)
  source = finetune.read(str(pretrained), "best")
  best_step = checkpoint.make_manager(str(pretrained), create=False,
                                      kind=checkpoint.BEST).latest_step()
  assert source.step == best_step and source.directory.endswith("checkpoints_best")
  state, text = finetune.load(programs.initial_state, source, config.init_from)
  fresh = programs.initial_state.params
  np.testing.assert_array_equal(state.params["dense_0"]["kernel"],
                                source.params["dense_0/kernel"])
  assert not np.array_equal(state.params["dense_0"]["kernel"], fresh["dense_0"]["kernel"])
  # Path by path: the new layer and the reshaped head kernel as initialised; the head's
  # bias (10 classes either way) fits, so it loads.
  jax.tree.map(np.testing.assert_array_equal, state.params["dense_1"], fresh["dense_1"])
  np.testing.assert_array_equal(state.params["head"]["kernel"], fresh["head"]["kernel"])
  np.testing.assert_array_equal(state.params["head"]["bias"], source.params["head/bias"])
  rows = {line.split()[0]: line.split()[1] for line in text.splitlines()[1:-1]}
  assert rows == {"dense_0/bias": "loaded", "dense_0/kernel": "loaded", "dense_1/bias": "missing",
                  "dense_1/kernel": "missing", "head/bias": "loaded",
                  "head/kernel": "shape-mismatched"}
  with pytest.raises(ConfigError, match="shape-mismatched"):  # strict (the default) refuses
    finetune.load(programs.initial_state, source, dict(config.init_from, strict=True))


def test_init_from_another_model_family_or_nothing(pretrained, tmp_path):
  config = _config(**{"init_from.path": str(pretrained)})
  with config.unlocked():
    config.model = dict(digits.get_config("cnn").model)
  with pytest.raises(ConfigError, match='does not fit this model. It was written by a "mlp" model; this '
                                       'config builds a "cnn"'):
    train.run(config, str(tmp_path / "cnn"))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    train.run(_config(**{"init_from.path": str(tmp_path / "nowhere")}), str(tmp_path / "a"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
    train.run(_config(**{"init_from.path": str(tmp_path / "empty")}), str(tmp_path / "b"))


# ------------------------------------------------------------------ freezing, factors


def test_trainable_mask_and_learning_rate_factors_literal_trees():
  params = {"dense_0": {"kernel": 0, "bias": 0}, "dense_1": {"kernel": 0, "bias": 0},
            "head": {"kernel": 0, "bias": 0}}
  assert finetune.trainable_mask(params, "^dense_0/") == {
      "dense_0": {"kernel": False, "bias": False}, "dense_1": {"kernel": True, "bias": True},
      "head": {"kernel": True, "bias": True}}
  assert finetune.learning_rate_factors(params, "^head/=10;bias$=0.5", layer_decay=0.5) == {
      "dense_0": {"kernel": 0.25, "bias": 0.125}, "dense_1": {"kernel": 0.5, "bias": 0.25},
      "head": {"kernel": 10.0, "bias": 5.0}}
  with pytest.raises(ConfigError, match='"regex=factor" pairs'):
    finetune.parse_multipliers("head:10")


def test_frozen_params_do_not_change_and_have_no_optimizer_state(pretrained, tmp_path):
  config = _config(**{"init_from.path": str(pretrained), "finetune.freeze": "^dense_0/"})
  train.run(config, str(tmp_path))
  before, after = _params(pretrained), _params(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, before["params"]["dense_0"],
               after["params"]["dense_0"])
  assert not np.array_equal(before["params"]["head"]["kernel"], after["params"]["head"]["kernel"])
  # Adam's moments exist for the head only: 2 x (1,280 + 10) floats, none for dense_0.
  sizes = [np.size(x) for x in jax.tree.leaves(after["opt_state"])]
  assert sum(s for s in sizes if s > 1) == 2 * (128 * 10 + 10)


def test_everything_frozen_is_an_error(tmp_path):
  with pytest.raises(ConfigError, match="freezes every parameter"):
    train.run(_config(**{"finetune.freeze": "."}), str(tmp_path))


def test_learning_rate_factors_scale_the_updates(tmp_path):
  """A factor of 0 on the head leaves it where it started; others still move."""
  config = _config(**{"finetune.lr_multipliers": "^head/=0", "train.num_epochs": 1})
  setup = Programs(config)
  train.run(config, str(tmp_path))
  after = _params(tmp_path)["params"]
  np.testing.assert_array_equal(after["head"]["kernel"], setup.initial_state.params["head"]["kernel"])
  assert not np.array_equal(after["dense_0"]["kernel"],
                            setup.initial_state.params["dense_0"]["kernel"])


# ------------------------------------------------------------------ surviving anything


SIGNAL_AT_STEP = """
import os, signal
from bigjax.training import hooks


class SignalAt(hooks.Hook):
  \"\"\"Sends the process a signal after a given step: the same moment on any machine.\"\"\"

  def after_step(self, run, state):
    if run.loop.step == int(os.environ["SIGNAL_STEP"]):
      os.kill(os.getpid(), getattr(signal, os.environ["SIGNAL_NAME"]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_a_run_stopped_any_way_resumes_to_the_same_params(how, tmp_path):
  epochs = ["--config.train.num_epochs=12", "--config.checkpoint.every_steps=15",
            "--config.train.steps_per_call=1"]
  run_py = lambda workdir, *args, env=None: subprocess.run(
      [sys.executable, "run.py", "--config=configs/digits.py", f"--workdir={workdir}",
       "--config.report.plots=False", "--config.report.html=False", *epochs, *args],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
  straight = run_py(tmp_path / "a")
  assert straight.returncode == 0, straight.stderr[-2000:]

  # Stopped mid-epoch 3 (44 steps an epoch), past a few checkpoints, by a hook.
  (tmp_path / "signal_at_step.py").write_text(SIGNAL_AT_STEP)
  env = dict(os.environ, SIGNAL_STEP="100", SIGNAL_NAME=how,
             PYTHONPATH=os.pathsep.join([str(tmp_path), REPO_ROOT]))
  stopped = run_py(tmp_path / "b", '--config.hooks=("signal_at_step:SignalAt",)', env=env)
  stopped_at = checkpoint.make_manager(str(tmp_path / "b"), create=False).latest_step()
  if how == "SIGKILL":  # the last complete checkpoint before it (every 15 steps, or an epoch's end)
    assert stopped.returncode == -signal.SIGKILL
    assert 0 < stopped_at < 100
  else:  # the loop sees the signal after the step it arrived in, saves there and stops
    assert stopped.returncode == 128 + getattr(signal, how), stopped.stderr[-2000:]
    assert f"{how}: saved a checkpoint at step 101" in stopped.stderr
    assert stopped_at == 101

  resumed = run_py(tmp_path / "b")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resumed from step {stopped_at}" in resumed.stderr
  a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])  # bit-identical


@pytest.mark.slow
def test_a_damaged_checkpoint_is_skipped_for_the_previous_one(tmp_path, caplog):
  config = _config()
  train.run(config, str(tmp_path))
  latest = checkpoint.make_manager(str(tmp_path), create=False).latest_step()
  data_files = [os.path.join(root, name)
                for root, _, names in os.walk(tmp_path / "checkpoints" / str(latest) / "state")
                for name in names if os.sep + "d" + os.sep in os.path.join(root, name) + os.sep
                or os.path.basename(root) == "d"]
  assert data_files
  for path in data_files:
    with open(path, "r+b") as f:
      f.truncate(10)
  with caplog.at_level("WARNING"):
    results = train.run(config, str(tmp_path))
  assert results["resumed_from_step"] == latest - 40  # the epoch before
  assert f"checkpoints/{latest} is damaged" in caplog.text
  assert os.path.isdir(tmp_path / "checkpoints_damaged" / str(latest))
  assert results["steps"] == latest  # and it trained that epoch again


@pytest.mark.slow
def test_a_save_killed_midway_leaves_the_last_complete_checkpoint_in_use(tmp_path):
  import shutil
  config = _config(**{"train.num_epochs": 2})
  train.run(config, str(tmp_path))
  # What a kill -9 during Orbax's save of step 120 leaves: its temporary folder, half written.
  partial = tmp_path / "checkpoints" / "120.orbax-checkpoint-tmp"
  shutil.copytree(tmp_path / "checkpoints" / "80", partial)
  for root, _, names in os.walk(partial):
    for name in names:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(max(0, os.path.getsize(os.path.join(root, name)) // 2))
  results = train.run(_config(**{"train.num_epochs": 4}), str(tmp_path))
  assert results["resumed_from_step"] == 80 and results["steps"] == 160
  assert 120 in checkpoint.list_steps(str(tmp_path))  # saved again, whole this time


@pytest.mark.slow
def test_precedence_workdir_checkpoint_then_resume_from_then_init_from(pretrained, tmp_path):
  config = _config(**{"checkpoint.resume_from": str(pretrained),
                      "init_from.path": str(pretrained), "train.num_epochs": 4})
  first = train.run(config, str(tmp_path))
  assert first["resumed_from_step"] == 3 * 40  # resume_from beats init_from
  again = train.run(config, str(tmp_path))
  assert again["resumed_from_step"] == 4 * 40  # this workdir's own checkpoint beats both


def test_every_steps_saves_between_epoch_ends(tmp_path):
  train.run(_config(**{"checkpoint.every_steps": 25, "checkpoint.max_to_keep": 10,
                       "train.num_epochs": 2}), str(tmp_path))
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == [25, 40, 50, 75, 80]


# ------------------------------------------------------------------ LoRA


@pytest.mark.slow
def test_lora_parameter_count_and_merged_equals_unmerged():
  from bigjax.finetuning import lora
  from bigjax.models import MLP
  model = MLP(hidden_sizes=(32,), num_classes=5)
  x = np.random.default_rng(0).normal(size=(4, 6, 6, 1)).astype(np.float32)
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  rank, scale = 3, 2.0
  wrapped = lora.add_adapters(params, rank, "kernel", jax.random.PRNGKey(1))
  assert lora.count(wrapped) == rank * (36 + 32) + rank * (32 + 5)
  assert set(finetune.flatten(wrapped["lora"])) == {"dense_0/kernel/a", "dense_0/kernel/b",
                                                    "head/kernel/a", "head/kernel/b"}
  # Give B values (it starts at zero), then compare the merged model with the low-rank path
  # computed separately: x W + b + scale (x A) B, layer by layer.
  wrapped["lora"] = jax.tree.map(
      lambda v: v + 0.1 * jax.random.normal(jax.random.PRNGKey(2), v.shape), wrapped["lora"])
  merged_out = model.apply({"params": lora.merge(wrapped, scale)}, x)
  base, ad = wrapped["base"], wrapped["lora"]
  h = x.reshape(4, -1)
  h = np.maximum(h @ base["dense_0"]["kernel"] + base["dense_0"]["bias"]
                 + scale * (h @ ad["dense_0"]["kernel"]["a"]) @ ad["dense_0"]["kernel"]["b"], 0)
  out = (h @ base["head"]["kernel"] + base["head"]["bias"]
         + scale * (h @ ad["head"]["kernel"]["a"]) @ ad["head"]["kernel"]["b"])
  np.testing.assert_allclose(merged_out, out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(lora.LoRAModel(model, scale).apply({"params": wrapped}, x),
                             merged_out, rtol=1e-6)


def test_lora_on_a_conv_kernel_is_a_low_rank_conv_then_a_1x1_conv():
  from bigjax.finetuning import lora
  rng = np.random.default_rng(3)
  kernel = rng.normal(size=(3, 3, 2, 8)).astype(np.float32)
  a = rng.normal(size=(18, 4)).astype(np.float32)
  b = rng.normal(size=(4, 8)).astype(np.float32)
  x = rng.normal(size=(1, 7, 7, 2)).astype(np.float32)
  conv = lambda inputs, k: jax.lax.conv_general_dilated(
      inputs, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  merged = lora.merge({"base": {"c": {"kernel": kernel}},
                       "lora": {"c": {"kernel": {"a": a, "b": b}}}}, 0.5)["c"]["kernel"]
  low_rank = conv(conv(x, a.reshape(3, 3, 2, 4)), b.reshape(1, 1, 4, 8))
  np.testing.assert_allclose(conv(x, merged), conv(x, kernel) + 0.5 * low_rank,
                             rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_lora_training_keeps_the_base_and_exports_merged_params(pretrained, tmp_path):
  from bigjax.finetuning import lora
  from bigjax.inference import evaluate as inference
  config = _config(**{"init_from.path": str(pretrained), "lora.rank": 4})
  with config.unlocked():
    config.report.html = True  # the report summarises the merged model
  results = train.run(config, str(tmp_path))
  assert results["trainable_params"] == 4 * (64 + 128) + 4 * (128 + 10)
  state = _params(tmp_path)
  source = _params(pretrained)["params"]
  jax.tree.map(np.testing.assert_array_equal, state["params"]["base"], source)  # frozen
  assert np.abs(state["params"]["lora"]["dense_0"]["kernel"]["b"]).sum() > 0  # trained
  sizes = [np.size(x) for x in jax.tree.leaves(state["opt_state"])]
  assert sum(s for s in sizes if s > 1) == 2 * results["trainable_params"]  # adapters only

  restored = checkpoint.ocp.StandardCheckpointer().restore(str(tmp_path / "export" / "params"))
  merged = lora.merge(state["params"], 8.0 / 4)
  jax.tree.map(np.testing.assert_allclose, restored, merged)
  # The exported params in the plain model give the run's test predictions.
  setup = Programs(_config())
  images = setup.splits["test"][0]
  plain = setup.model.apply({"params": restored}, images)
  assert float((plain.argmax(-1) == setup.splits["test"][1]).mean()) == pytest.approx(
      results["test_accuracy"])
  assert inference.evaluate(config, str(tmp_path), "test")["test"] == results["metrics"]["test"]


# ------------------------------------------------------------------ pre-training


@pytest.mark.slow
def test_autoencoder_pretraining_then_fine_tuning_loads_the_encoder(fashion_mnist_dir, tmp_path):
  from configs import fashion_mnist_fewlabels, fashion_mnist_pretrain
  pre = fashion_mnist_pretrain.get_config("small")
  with pre.unlocked():
    pre.report.plots = pre.report.html = False
  pretrained = train.run(pre, str(tmp_path / "pre"))
  assert pretrained["test_loss"] < 0.1 and "test_accuracy" not in pretrained  # no labels used
  config = fashion_mnist_fewlabels.get_config()
  with config.unlocked():
    config.init_from.path = str(tmp_path / "pre")
    config.train.num_epochs = 1
    config.data.max_test_examples = 500
  results = train.run(config, str(tmp_path / "fine"))
  table = (tmp_path / "fine" / "init_from.txt").read_text()
  for line in ("dense_0/kernel  loaded", "dense_1/kernel  loaded", "decoder_0/kernel  unused",
               "head/kernel       re-initialised"):
    assert " ".join(line.split()) in " ".join(table.split())
  assert results["steps"] == 600 // 32


@pytest.mark.slow
def test_contrastive_pretraining_then_probe_and_fine_tune_load_the_backbone(fashion_mnist_dir,
                                                                            tmp_path):
  from configs import fashion_mnist_fewlabels, fashion_mnist_simclr
  pre = fashion_mnist_simclr.get_config("cnn,small")
  with pre.unlocked():
    pre.report.plots = pre.report.html = False
  pretrained = train.run(pre, str(tmp_path / "pre"))
  import json
  rows = [json.loads(line) for line in open(tmp_path / "pre" / "metrics.jsonl")]
  assert pretrained["steps"] == 2048 // 256 and "test_accuracy" not in pretrained
  assert all(np.isfinite(r["loss"]) and "accuracy" not in r for r in rows)
  _, backbone = checkpoint.latest_params(str(tmp_path / "pre"))
  assert set(backbone) == {"projection_0", "projection_1", "conv_0", "conv_1"}  # the trunk

  def fewlabels(variant, workdir):
    config = fashion_mnist_fewlabels.get_config(variant)
    with config.unlocked():
      config.init_from.path = str(tmp_path / "pre")
      config.train.num_epochs = 1
      config.data.max_test_examples = 500
      config.eval.at_end = "test"
    results = train.run(config, str(tmp_path / workdir))
    return results, checkpoint.latest_params(str(tmp_path / workdir))[1]

  probe, probed = fewlabels("cnn,probe", "probe")
  for name in ("conv_0", "conv_1"):  # frozen: exactly as pre-trained
    np.testing.assert_array_equal(probed[name]["kernel"], backbone[name]["kernel"])
  assert probe["test_accuracy"] > 0.2  # the dense layer and head learn on frozen features
  fine, tuned = fewlabels("cnn", "fine")
  table = " ".join((tmp_path / "fine" / "init_from.txt").read_text().split())
  for line in ("conv_0/kernel loaded", "conv_1/kernel loaded", "projection_0/kernel unused",
               "dense_0/kernel re-initialised", "head/kernel re-initialised"):
    assert line in table
  assert np.abs(tuned["conv_0"]["kernel"] - backbone["conv_0"]["kernel"]).max() > 0

  # The contrastive loss cannot score evaluation batches, nor one view: one line each.
  for overrides, message in (({"eval.at_end": "test"}, "evaluation does not make"),
                             ({"data.augment.views": 1}, "augment.views=2")):
    with pre.unlocked():
      pre.update_from_flattened_dict({"eval.at_end": "", "data.augment.views": 2, **overrides})
    with pytest.raises(ConfigError, match=message):
      train.run(pre, str(tmp_path / f"bad_{len(message)}"))


@pytest.mark.slow
def test_masked_autoencoder_pretraining_then_the_vit_fine_tune_loads_its_encoder(
    fashion_mnist_dir, tmp_path):
  from configs import fashion_mnist_fewlabels, fashion_mnist_mae
  pre = fashion_mnist_mae.get_config("small")
  with pre.unlocked():
    pre.report.plots = pre.report.html = False
  pretrained = train.run(pre, str(tmp_path / "pre"))
  assert 0 < pretrained["test_loss"] < 2.5 and "test_accuracy" not in pretrained
  config = fashion_mnist_fewlabels.get_config("vit")
  with config.unlocked():
    config.init_from.path = str(tmp_path / "pre")
    config.train.num_epochs = 1
    config.data.max_test_examples = 500
    config.eval.at_end = "test"
  results = train.run(config, str(tmp_path / "fine"))
  table = " ".join((tmp_path / "fine" / "init_from.txt").read_text().split())
  for line in ("patch_embedding/kernel loaded", "block_3/mlp/dense_1/kernel loaded",
               "position_embedding loaded", "decoder_pred/kernel unused", "mask_token unused",
               "head/kernel re-initialised"):
    assert line in table
  assert results["steps"] == 600 // 32


def test_keep_k_latest_and_the_best_apart(tmp_path):
  rows_path = tmp_path / "metrics.jsonl"
  train.run(_config(**{"train.num_epochs": 5, "checkpoint.max_to_keep": 2}), str(tmp_path))
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == [160, 200]
  import json
  validation = {r["step"]: r["accuracy"] for r in map(json.loads, open(rows_path))
                if r["split"] == "validation"}
  best_step = min(s for s, a in validation.items() if a == max(validation.values()))
  assert os.listdir(tmp_path / "checkpoints_best") == [str(best_step)]


def test_throttled_epoch_saves_still_keep_the_first_last_and_best(tmp_path):
  import json
  from bigjax.inference import evaluate as inference
  # The learning rate peaks at the end of a 2-epoch warmup (step 80): a "best" that
  # arrives between saves, so it must be kept in memory and written later.
  config = _config(**{"train.num_epochs": 6, "checkpoint.max_to_keep": 10,
                      "checkpoint.min_interval_seconds": 3600.0,
                      "checkpoint.best_metric": "train/learning_rate",
                      "optimizer.schedule.name": "linear",
                      "optimizer.schedule.warmup_steps": 80})
  results = train.run(config, str(tmp_path))
  # No epoch end is an hour after the start or a save: only the last saves.
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == [240]
  assert os.listdir(tmp_path / "checkpoints_best") == ["80"]
  assert results["best_checkpoint"]["step"] == 80
  validation = {r["step"]: r["accuracy"] for r in map(json.loads, open(tmp_path /
                                                                        "metrics.jsonl"))
                if r["split"] == "validation"}
  # The state kept in memory is step 80's: evaluating it reproduces step 80's metrics.
  evaluated = inference.evaluate(config, str(tmp_path), "validation", step="best")
  assert evaluated["step"] == 80
  assert evaluated["validation"]["accuracy"] == validation[80] != validation[240]


@pytest.mark.slow
def test_batch_norm_statistics_can_stay_frozen(pretrained, tmp_path):
  def run(workdir, freeze):
    config = _config(**{"model.norm": "batch", "train.num_epochs": 1,
                        "finetune.freeze_batch_stats": freeze})
    setup = Programs(config)
    train.run(config, str(workdir))
    return setup.initial_state.model_state, _params(workdir)["model_state"]

  before, after = run(tmp_path / "frozen", True)
  jax.tree.map(np.testing.assert_array_equal, before, after)
  before, after = run(tmp_path / "moving", False)
  assert not np.allclose(before["batch_stats"]["norm_0"]["mean"],
                         after["batch_stats"]["norm_0"]["mean"])


def test_lora_train_base_lets_the_named_base_params_train_too():
  """lora.train_base="head/": the head trains with the adapters; the rest of the base stays."""
  config = _config(**{"lora.rank": 4, "lora.train_base": "head/", "lora.targets": "dense_0"})
  programs = Programs(config)
  state = programs.initial_state
  images, labels = programs.splits["train"]
  chunk = next(programs.chunks(np.arange(len(labels)), 0, 1, 0, 1000, 0))
  after, _ = programs.train(jax.tree.map(lambda x: x.copy(), state), chunk)
  before_base, after_base = state.params["base"], after.params["base"]
  np.testing.assert_array_equal(after_base["dense_0"]["kernel"], before_base["dense_0"]["kernel"])
  assert not np.array_equal(after_base["head"]["kernel"], before_base["head"]["kernel"])
  assert not np.array_equal(after.params["lora"]["dense_0"]["kernel"]["b"],
                            state.params["lora"]["dense_0"]["kernel"]["b"])
  assert set(finetune.flatten(state.params["lora"])) == {"dense_0/kernel/a",
                                                         "dense_0/kernel/b"}
  head = programs.initial_state.params["base"]["head"]
  assert programs.num_trainable == 4 * (64 + 128) + head["kernel"].size + head["bias"].size


@pytest.mark.slow
def test_init_from_model_state_loads_batch_statistics_only_when_asked(tmp_path):
  norm = {"model.norm": "batch", "train.num_epochs": 1}
  source = tmp_path / "source"
  train.run(_config(**norm), str(source))
  saved = _params(source)["model_state"]
  assert saved  # BatchNorm's running statistics, moved by training
  for load_state in (True, False):
    config = _config(**norm, **{"init_from.path": str(source), "init_from.model_state":
                                load_state, "optimizer.learning_rate": 0.0,
                                "finetune.freeze_batch_stats": True})
    workdir = tmp_path / f"load_{load_state}"
    manager = checkpoint.make_manager(str(workdir))
    programs = Programs(config)
    state, _, _ = train.restore_or_init(config, str(workdir), manager, programs)
    manager.close()
    fresh = programs.initial_state.model_state
    expected = saved if load_state else jax.device_get(fresh)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.model_state), expected)
    if load_state:  # (and the fresh statistics really differ from the trained ones)
      assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(saved),
                                                          jax.tree.leaves(fresh)))
