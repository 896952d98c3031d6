"""End to end: the driver on small real data, resume, eval mode, and bad input."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax import train
from bigjax.inference import evaluate as inference
from bigjax.training import checkpoint
from bigjax.training.programs import Programs
from bigjax.registry import ConfigError
from configs import digits, fashion_mnist, mnist

from conftest import REPO_ROOT


def _digits_config(**train_overrides):
  config = digits.get_config()
  with config.unlocked():
    config.train.num_epochs = 4
    config.train.update(train_overrides)
  return config


_latest_params = checkpoint.latest_params


def _run_py(*args, timeout=300):
  return subprocess.run([sys.executable, "run.py", *args], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=timeout)


@pytest.mark.slow
def test_run_py_trains_fashion_mnist_slice_and_writes_every_output(fashion_mnist_dir, tmp_path):
  workdir = tmp_path / "run"
  proc = _run_py("--config=configs/fashion_mnist.py", f"--workdir={workdir}",
                 "--config.data.max_train_examples=10000", "--config.data.max_test_examples=2000",
                 "--config.train.num_epochs=2", "--config.train.log_every_steps=100")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "ex/s | ETA" in proc.stderr and "test | loss" in proc.stderr

  results = json.loads((workdir / "results.json").read_text())
  assert results["test_accuracy"] >= 0.80, results  # measured 0.82 (784-128-10, 8k examples, 2 epochs)
  assert results["num_params"] == 101_770 and results["steps"] == 2 * 8000 // 32
  for key in ("test_loss", "train_seconds", "compile_seconds", "init_seconds",
              "steady_examples_per_second"):
    assert results[key] > 0
  # Start-up covers the model's init and the train step's compile, and more (data, checks).
  assert results["startup_seconds"] > results["init_seconds"] + results["compile_seconds"]
  config = json.loads((workdir / "config.json").read_text())
  assert config["data"]["max_train_examples"] == 10000 and config["model"]["hidden_sizes"] == [128]

  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  splits = [r["split"] for r in rows]
  assert splits.count("validation") == 2 and splits.count("test") == 1
  assert splits.count("train") == 2 * 3  # every 100 steps, and at each epoch end (step 250)
  test_row = rows[-1]
  assert test_row["count"] == 2000 and test_row["accuracy"] == results["test_accuracy"]
  step, params = _latest_params(str(workdir))
  assert step == 500 and params["head"]["kernel"].shape == (128, 10)

  # Eval mode on the finished run (its config.json) reproduces the final test metrics exactly.
  proc = _run_py("--mode=eval", f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  evaluated = json.loads((workdir / "eval_results.json").read_text())
  assert evaluated["test"]["accuracy"] == results["test_accuracy"]
  assert evaluated["test"]["loss"] == results["test_loss"]
  assert evaluated["validation"]["loss"] == results["validation_loss"]


@pytest.mark.slow
def test_digits_run_reaches_stated_accuracy(tmp_path):
  results = train.run(digits.get_config(), str(tmp_path))
  assert results["test_accuracy"] >= 0.93, results  # configs/digits.py states ~0.96
  assert results["test_accuracy"] < 1.0


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(tmp_path):
  straight = train.run(_digits_config(), str(tmp_path / "straight"))
  # Stop after 1 epoch, then run again on the same workdir with the full length.
  train.run(_digits_config(num_epochs=1), str(tmp_path / "resumed"))
  step_1, params_1 = _latest_params(str(tmp_path / "resumed"))
  resumed = train.run(_digits_config(), str(tmp_path / "resumed"))
  assert resumed["resumed_from_step"] == step_1 > 0
  step_a, params_a = _latest_params(str(tmp_path / "straight"))
  step_b, params_b = _latest_params(str(tmp_path / "resumed"))
  assert step_a == step_b == straight["steps"]
  assert not np.array_equal(params_1["head"]["kernel"], params_a["head"]["kernel"])
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)  # bit-identical on CPU
  assert resumed["test_loss"] == straight["test_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mlp", "cnn"])
def test_nothing_compiles_after_the_first_epoch(variant, tmp_path):
  """Train step, evaluation and checkpointing all compile in epoch 1; epochs 2-4 only run
  (with a checkpoint every epoch, and a log interval that is not a multiple of the epoch)."""
  config = digits.get_config(variant)
  with config.unlocked():
    config.train.num_epochs = 4
    config.train.log_every_steps = 7
    config.checkpoint.min_interval_seconds = 0
  results = train.run(config, str(tmp_path))
  compiles = results["compilations_per_epoch"]
  assert len(compiles) == 4 and compiles[0] > 0, compiles
  assert compiles[1:] == [0, 0, 0], compiles


def test_a_first_save_after_the_first_epoch_compiles_nothing_new(tmp_path):
  """The checkpoints' integrity record compiles before the loop: a run whose first epoch-end
  save is skipped (min_interval_seconds) still compiles nothing in its later epochs."""
  config = digits.get_config()
  with config.unlocked():
    config.train.num_epochs = 3
    config.checkpoint.update(min_interval_seconds=1e9, best_metric="")
    config.report.update(plots=False, html=False, tensorboard=False)
  results = train.run(config, str(tmp_path))
  assert results["compilations_per_epoch"][1:] == [0, 0], results["compilations_per_epoch"]


def test_compile_counter_counts_compilations_not_cached_calls():
  from bigjax.training.compilation import CompileCounter
  f = jax.jit(lambda x: x * 3 + 1)
  with CompileCounter() as compiles:
    f(np.ones(3, np.float32))
    f(np.ones(3, np.float32))  # cached
    f(np.ones(4, np.float32))  # a new shape compiles again
  assert compiles.count == 2 and compiles.seconds > 0
  f(np.ones(5, np.float32))  # after the block: not counted
  assert compiles.count == 2


def test_gc_paused_restores_the_collector_as_it_found_it():
  import gc
  from bigjax.training.compilation import gc_paused
  assert gc.isenabled()
  with pytest.raises(RuntimeError):
    with gc_paused():
      assert not gc.isenabled()
      raise RuntimeError("a failed compile")
  assert gc.isenabled()  # back on, even after an error
  gc.disable()
  try:
    with gc_paused():
      assert not gc.isenabled()
    assert not gc.isenabled()  # a caller's choice to keep it off is kept
  finally:
    gc.enable()


def test_compile_counter_counts_compiles_in_every_thread():
  import threading
  from bigjax.training.compilation import CompileCounter
  f = jax.jit(lambda x: x * 5 - 2)
  x = jnp.ones(3)
  with CompileCounter() as other_thread:
    thread = threading.Thread(target=lambda: f(x))
    thread.start()
    thread.join()
  assert other_thread.count >= 1 and other_thread.seconds > 0
  with CompileCounter() as again:
    f(x)  # compiled already: nothing to count
  assert again.count == 0


def test_chunks_cover_the_epoch_and_never_cross_a_log_or_save_step():
  """k steps per call, but a call ends at every logging and checkpoint step and at the
  epoch's end (so outputs are the same whatever k is), and the calls cover exactly the
  epoch's batches in order."""
  programs = Programs(_digits_config(steps_per_call=4))
  order = np.arange(programs.steps_per_epoch * programs.batch_size)
  start, end, step = 1, programs.steps_per_epoch, 1
  chunks = list(programs.chunks(order, start, end, step, log_every=6, save_every=9))
  sizes = [c.steps for c in chunks]
  assert sum(sizes) == end - start and set(sizes) <= {1, 4}
  boundaries = np.cumsum(sizes) + step
  assert 4 in sizes and 1 in sizes
  for multiple in (6, 9):  # every logging and checkpoint step ends a call
    for s in range(multiple, end, multiple):
      assert s in boundaries, (multiple, s, sizes)
  rows = np.concatenate([np.asarray(c.inputs).reshape(-1) for c in chunks])
  np.testing.assert_array_equal(rows, order[start * programs.batch_size:])


@pytest.mark.slow
def test_second_run_loads_its_train_step_from_the_compilation_cache(tmp_path):
  cache = tmp_path / "cache"
  args = ("--config=configs/digits.py", "--config.train.num_epochs=1",
          f"--compilation_cache={cache}")
  first = _run_py(*args, f"--workdir={tmp_path / 'a'}")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "train step compiled in" in first.stderr and any(cache.iterdir())
  second = _run_py(*args, f"--workdir={tmp_path / 'b'}")
  assert second.returncode == 0, second.stderr[-3000:]
  assert "train step loaded from the compilation cache in" in second.stderr
  a, b = (json.loads((tmp_path / name / "results.json").read_text()) for name in "ab")
  assert a["metrics"] == b["metrics"]  # the same program, so the same numbers
  # A loaded executable still counts as a compilation: it was traced and lowered again.
  assert b["compilations_per_epoch"][0] > 0

  off = _run_py(*args[:2], "--compilation_cache=", f"--workdir={tmp_path / 'c'}")
  assert off.returncode == 0 and "train step compiled in" in off.stderr, off.stderr[-3000:]


def test_cli_shows_bigjax_input_errors_without_a_traceback_and_others_with_one():
  from bigjax import cli
  from bigjax.models.layers import ACTIVATIONS

  def raised(fn):
    try:
      fn()
    except Exception as e:  # noqa: BLE001
      return e
    raise AssertionError("nothing raised")

  assert cli.raised_by_bigjax(raised(lambda: ACTIVATIONS.get("relux")))
  assert cli.raised_by_bigjax(raised(lambda: train.load_run_config("/nonexistent/run")))
  # Raised inside numpy (a bug, or a plug-in's): the traceback is what helps.
  assert not cli.raised_by_bigjax(raised(lambda: np.zeros(3).reshape(2)))
  assert not cli.raised_by_bigjax(ValueError("never raised"))


def test_run_py_eval_of_an_empty_workdir_says_so_in_one_message(tmp_path):
  proc = _run_py("--mode=eval", f"--workdir={tmp_path}", "--compilation_cache=")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert f"bigjax: error: {tmp_path}/config.json does not exist" in proc.stderr
  env = dict(os.environ, BIGJAX_TRACEBACK="1")
  proc = subprocess.run([sys.executable, "run.py", "--mode=eval", f"--workdir={tmp_path}"],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("override, expected", [
    ("--config.optimizer.learnng_rate=0.1",
     '--config.optimizer.learnng_rate: the config has no key "learnng_rate". '
     'Did you mean "learning_rate"?'),
    ("--config.trian.batch_size=8",
     '--config.trian.batch_size: the config has no key "trian". Did you mean "train"?'),
    ("--config.train.batch_size=abc", "--config.train.batch_size=abc: invalid literal"),
])
def test_a_bad_override_is_one_line_before_anything_runs(override, expected):
  proc = _run_py("--config=configs/digits.py", override, "--compilation_cache=")
  assert proc.returncode == 1, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert lines[0].startswith("bigjax: error: ") and expected in lines[0], proc.stderr
  assert "Traceback" not in proc.stderr and len(lines) <= 2


def test_compilation_cache_that_cannot_be_created_is_skipped_with_a_warning(tmp_path, caplog):
  from bigjax.training.compilation import enable_persistent_cache
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with caplog.at_level("WARNING", logger="bigjax"):
    assert enable_persistent_cache(str(blocker / "cache")) is None
  assert "compilation cache off" in caplog.text and "--compilation_cache" in caplog.text
  assert enable_persistent_cache("") is None


@pytest.mark.slow
def test_schedule_accumulation_and_regularisation_through_run_py(tmp_path):
  workdir = tmp_path / "run"
  proc = _run_py("--config=configs/digits.py", f"--workdir={workdir}",
                 "--config.train.num_epochs=3", "--config.train.log_every_steps=10",
                 "--config.train.grad_accum_steps=4", "--config.optimizer.name=momentum",
                 "--config.optimizer.learning_rate=0.05", "--config.optimizer.momentum=0.8",
                 "--config.optimizer.schedule.name=cosine",
                 "--config.optimizer.schedule.warmup_steps=20",
                 "--config.optimizer.clip_norm=1.0", "--config.loss.l2=1e-4",
                 "--config.loss.label_smoothing=0.1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert results["test_accuracy"] >= 0.85, results
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  logged = {r["step"]: r["learning_rate"] for r in rows if r["split"] == "train"}
  total = results["steps"]  # 40 steps of 32 per epoch on the 1,294 training digits
  assert total == 120 and set(logged) >= {10, 20, 50, 100, 120}
  # The rate the step-s update used: 0.05 x warmup (s-1)/20, then a cosine to 0 at step 120.
  assert logged[10] == pytest.approx(0.05 * 9 / 20, rel=1e-5)
  cosine = lambda s: 0.05 * 0.5 * (1 + np.cos(np.pi * (s - 1 - 20) / 100))
  for s in (50, 100, 120):
    assert logged[s] == pytest.approx(cosine(s), rel=1e-4, abs=1e-7)
  assert "lr " in proc.stderr


@pytest.mark.slow
def test_steps_per_call_changes_speed_not_results(tmp_path):
  runs = {}
  for k in (1, 7):  # 7 divides neither the 40 steps of an epoch nor the logging interval
    config = _digits_config(num_epochs=2, steps_per_call=k, log_every_steps=25)
    runs[k] = train.run(config, str(tmp_path / str(k)))
  _, params_1 = _latest_params(str(tmp_path / "1"))
  _, params_7 = _latest_params(str(tmp_path / "7"))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params_1, params_7)
  assert runs[7]["test_accuracy"] == pytest.approx(runs[1]["test_accuracy"], abs=0.003)
  logged = {}
  for k in (1, 7):
    rows = [json.loads(line) for line in (tmp_path / str(k) / "metrics.jsonl").open()]
    logged[k] = [(r["step"], r["split"]) for r in rows]
    train_losses = [r["loss"] for r in rows if r["split"] == "train"]
    logged[k, "loss"] = train_losses
  assert logged[1] == logged[7]  # same rows at the same steps: 25, 40, 50, 75, 80
  np.testing.assert_allclose(logged[7, "loss"], logged[1, "loss"], rtol=1e-4)


def test_steps_per_call_must_be_positive(tmp_path):
  with pytest.raises(ConfigError, match="steps_per_call=0"):
    train.run(_digits_config(steps_per_call=0), str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("config_module", ["cifar10_vit", "cifar10_resnet"])
def test_cifar10_configs_train_on_tfds_mock_data(config_module, tmp_path):
  import importlib
  import tensorflow_datasets as tfds
  config = importlib.import_module(f"configs.{config_module}").get_config("small")
  with config.unlocked():
    config.train.batch_size = 16
  with tfds.testing.mock_data(num_examples=64):
    results = train.run(config, str(tmp_path))
  assert results["steps"] == int(64 * 0.9) // 16 and np.isfinite(results["test_loss"])


@pytest.mark.slow
def test_tfds_path_end_to_end_with_mock_data(tmp_path):
  import tensorflow_datasets as tfds
  config = mnist.get_config("cnn,small")
  with config.unlocked():
    config.train.batch_size = 16
  with tfds.testing.mock_data(num_examples=64):
    results = train.run(config, str(tmp_path))
  assert results["steps"] == int(64 * 0.8) // 16 and np.isfinite(results["test_loss"])


# ------------------------------------------------------------------ bad input


def test_config_key_typo_fails_with_did_you_mean(tmp_path):
  proc = _run_py("--config=configs/digits.py", f"--workdir={tmp_path}",
                 "--config.train.num_epoch=1", timeout=120)
  assert proc.returncode != 0
  assert 'Did you mean "num_epochs"' in proc.stderr


def test_unknown_names_list_the_known_ones(tmp_path):
  for group, key, value, known in [("data", "source", "idxx",
                                   "arrays, diabetes, digits, folder, idx, text, text_classification, tfds"),
                                   ("loss", "name", "hinge_loss",
                                    "mean_absolute_error, mean_squared_error, multiclass_hinge, "
                                    "nt_xent, reconstruction_mse, sigmoid_binary_cross_entropy, "
                                    "softmax_cross_entropy"),
                                   ("optimizer", "name", "adamm",
                                    "adafactor, adagrad, adam, adamw, lamb, lion, momentum, "
                                    "nesterov, rmsprop, sgd"),
                                   ("model", "name", "resnet9000",
                                    "cnn, denoising_autoencoder, gpt, mae, mlp, projected")]:
    config = digits.get_config()
    config[group][key] = value
    with pytest.raises(ConfigError, match=f"Unknown .*{value}.*Known .*{known}"):
      train.run(config, str(tmp_path / group))


def test_batch_larger_than_data_fails_before_training(tmp_path):
  config = digits.get_config()
  config.train.batch_size = 5000
  with pytest.raises(ConfigError, match=r"batch_size=5000 is larger than the 1294 training"):
    train.run(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "metrics.jsonl")


def test_labels_out_of_range_for_the_model(tmp_path):
  config = digits.get_config()
  config.model.num_classes = 5
  with pytest.raises(ConfigError, match=r"labels in \[0, 9\].*num_classes=5.*num_classes=10"):
    train.run(config, str(tmp_path))


def test_missing_local_data_path(tmp_path):
  config = fashion_mnist.get_config()
  config.data.source, config.data.path = "idx", str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="missing.*does not exist"):
    train.run(config, str(tmp_path / "w"))


@pytest.mark.slow
def test_resume_under_a_different_config_is_refused(tmp_path):
  train.run(_digits_config(num_epochs=1), str(tmp_path))
  config = _digits_config(num_epochs=1)
  config.optimizer.learning_rate = 0.5
  with pytest.raises(ConfigError, match=r"optimizer.learning_rate: 0.001 -> 0.5"):
    train.run(config, str(tmp_path))


def test_eval_of_a_workdir_without_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoint in"):
    inference.evaluate(digits.get_config(), str(tmp_path))


def test_nan_pixels_fail_before_training(tmp_path):
  from bigjax.data import sources

  def nan_digits(data_config):
    raw = sources.load_digits(data_config)
    raw.train_inputs = raw.train_inputs.astype(np.float32)
    raw.train_inputs[3, 2, 2, 0] = np.nan
    return raw

  if "test_nan_digits" not in sources.SOURCES:
    sources.register_source("test_nan_digits")(nan_digits)
  config = digits.get_config()
  config.data.source = "test_nan_digits"
  with pytest.raises(ConfigError, match="train split has 1 NaN or infinite"):
    train.run(config, str(tmp_path))


def test_diverging_training_stops_with_a_clear_error(tmp_path):
  config = _digits_config(num_epochs=1)
  config.optimizer = dict(name="sgd", learning_rate=1e30)
  with pytest.raises(FloatingPointError, match="loss became nan.*learning_rate"):
    train.run(config, str(tmp_path))


@pytest.mark.slow
def test_eval_with_a_config_that_does_not_fit_the_checkpoint(tmp_path):
  train.run(_digits_config(num_epochs=1), str(tmp_path))
  wider = _digits_config()
  wider.model.hidden_sizes = (256,)
  with pytest.raises(checkpoint.CheckpointMismatchError) as e:
    inference.evaluate(wider, str(tmp_path))
  message = str(e.value)
  assert "does not fit" in message
  assert "['params']['dense_0']['kernel']: checkpoint shape (64, 128), this config's shape (64, 256)" in message
  assert "['params']['head']['kernel']: checkpoint shape (128, 10)" in message


def test_restoring_a_model_on_images_with_other_channels_names_the_channels(tmp_path):
  from bigjax.models import build_model, init_variables
  from bigjax.core.optimizers import build_optimizer
  from bigjax.core.steps import create_train_state
  model = build_model(dict(name="cnn", conv_features=(4,), dense_sizes=(), num_classes=10))
  tx = build_optimizer({"name": "adam", "learning_rate": 1e-3})

  def state_for(channels):
    x = np.zeros((1, 8, 8, channels), np.float32)
    return create_train_state(init_variables(model, jax.random.PRNGKey(0), x), tx,
                              jax.random.PRNGKey(0))

  manager = checkpoint.make_manager(str(tmp_path))
  checkpoint.save(manager, 1, state_for(1), {})
  manager.wait_until_finished()
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"\['params'\]\['conv_0'\]\['kernel'\]: the model was trained "
                           r"on 1-channel images, but this data has 3 channels. Convert"):
    checkpoint.restore(manager, 1, state_for(3), input_channels=3)
  manager.close()
