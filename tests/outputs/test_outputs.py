"""What a run leaves for people (pictures, report, logs), eval/predict modes, termination."""

import csv
import html.parser
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bigjax import train
from bigjax.core import metrics
from bigjax.inference import evaluate as inference
from bigjax.training.programs import Programs
from bigjax.registry import ConfigError
from configs import digits


def _config(**overrides):
  config = digits.get_config()
  with config.unlocked():
    config.train.num_epochs = 3
    for key, value in overrides.items():
      section, _, name = key.rpartition(".")
      target = config
      for part in section.split(".") if section else []:
        target = target[part]
      target[name] = value
  return config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = _config()
  return config, workdir, train.run(config, workdir)


class _PageParser(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.images, self.links, self.headings, self._in_heading = [], [], [], False

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "img":
      self.images.append(attrs["src"])
    for key in ("href", "src"):
      if key in attrs:
        self.links.append(attrs[key])
    self._in_heading = tag == "h2"

  def handle_data(self, data):
    if self._in_heading:
      self.headings.append(data)
      self._in_heading = False


@pytest.mark.slow
def test_a_run_writes_pictures_report_csv_and_tensorboard(finished_run):
  from PIL import Image
  config, workdir, results = finished_run
  for name in ("learning_curves.png", "confusion_matrix_test.png", "predictions_test.png",
               "confident_mistakes_test.png"):
    with Image.open(os.path.join(workdir, name)) as image:
      image.verify()  # a complete, valid PNG
      assert image.format == "PNG" and min(image.size) > 200, name

  page = open(os.path.join(workdir, "report.html")).read()
  parser = _PageParser()
  parser.feed(page)
  assert parser.headings == ["Results", "Per class (test)", "Pictures", "Model", "Timing",
                             "Environment", "Config"]
  assert len(parser.images) == 4 and all(src.startswith("data:image/png;base64,")
                                         for src in parser.images)
  assert not [link for link in parser.links if not link.startswith("data:")]  # opens offline
  assert f"{results['test_accuracy']:.4f}" in page and "f1_macro" in page
  markdown = open(os.path.join(workdir, "report.md")).read()
  assert "![Confusion matrix on the test split.](confusion_matrix_test.png)" in markdown

  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  with open(os.path.join(workdir, "metrics.csv")) as f:
    table = list(csv.DictReader(f))
  assert len(table) == len(rows) and table[-1]["split"] == "test"
  assert float(table[-1]["accuracy"]) == results["test_accuracy"]
  assert {r["split"] for r in rows} == {"train", "validation", "test"}

  event_accumulator = pytest.importorskip(
      "tensorboard.backend.event_processing.event_accumulator")
  events = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"))
  events.Reload()
  assert len(events.Scalars("validation/accuracy")) == 3  # one per epoch
  assert events.Scalars("test/accuracy")[-1].value == pytest.approx(results["test_accuracy"])
  assert sorted(events.Tags()["images"]) == ["confident_mistakes_test", "confusion_matrix_test",
                                             "learning_curves", "predictions_test"]
  grid = events.Images("predictions_test")[-1]
  with Image.open(os.path.join(workdir, "predictions_test.png")) as image:
    assert (grid.width, grid.height) == image.size
  text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
  assert json.loads(text.strip("`\n"))["model"]["name"] == config.model.name


def _red_pixels(path) -> int:
  from PIL import Image
  with Image.open(path) as image:
    rgb = np.asarray(image.convert("RGB")).astype(int)
  return int(((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum())


@pytest.mark.parametrize("shape", [(28, 28, 1), (16, 40, 3)])
def test_prediction_grid_frames_the_mistakes_and_only_them(tmp_path, shape):
  from PIL import Image
  from bigjax.outputs import plots
  images = np.random.default_rng(0).random((7, *shape)).astype(np.float32)
  images[..., 0] *= 0.5  # colour images with no red of their own: red is the frames' and titles'
  labels = np.arange(7) % 3
  names = ["cat", "dog", "bird"]
  right = str(tmp_path / "right.png")
  plots.prediction_grid(images, labels, labels, np.full(7, 0.9), names, right, "all right")
  wrong = labels.copy()
  wrong[[1, 5]] = (wrong[[1, 5]] + 1) % 3
  mistakes = str(tmp_path / "mistakes.png")
  plots.prediction_grid(images, labels, wrong, np.full(7, 0.9), names, mistakes, "two wrong")
  assert _red_pixels(right) == 0
  # Two frames of 3 points around images of 1.9 inches (at 100 dpi): well over 1000 pixels.
  assert _red_pixels(mistakes) > 1000
  with Image.open(mistakes) as image:
    width, height = image.size
  # 5 columns and 2 rows; a wide image's row is lower than a square one's (382 against
  # 610 pixels, with the title).
  assert width > 1000 and (height < 450 if shape[0] < shape[1] else height > 550)


def test_report_names_library_versions_without_importing_them():
  from conftest import REPO_ROOT
  code = ("import sys; from bigjax.outputs import artifacts; v = artifacts._library_versions({}); "
          "print(sorted(v), 'tensorflow_datasets' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, cwd=REPO_ROOT).stdout
  assert out.strip() == ("['jaxlib backend', 'numpy', 'orbax', 'tensorflow_datasets'] False")


@pytest.mark.slow
def test_report_renders_in_a_headless_browser(finished_run):
  browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                  if shutil.which(b)), None)
  if browser is None:
    assert not os.environ.get("CI"), "CI installs chromium (.ci/run); it is missing"
    pytest.skip("no headless Chromium installed (apt-get install chromium)")
  _, workdir, _ = finished_run
  dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                        "file://" + os.path.join(workdir, "report.html")],
                       capture_output=True, text=True, timeout=120).stdout
  assert "Per class (test)" in dom and dom.count("<img") == 4


@pytest.mark.slow
def test_eval_mode_reproduces_every_final_metric(finished_run):
  config, workdir, results = finished_run
  evaluated = inference.evaluate(config, workdir, "validation,test")
  assert evaluated["step"] == results["steps"]
  assert evaluated["test"] == results["metrics"]["test"]  # per class, confusion matrix too
  assert evaluated["validation"] == results["metrics"]["validation"]
  written = json.load(open(os.path.join(workdir, "eval_results.json")))
  assert written["test"]["confusion_matrix"] == results["metrics"]["test"]["confusion_matrix"]

  best = results["best_checkpoint"]
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  accuracies = {r["step"]: r["accuracy"] for r in rows if r["split"] == "validation"}
  assert best["metric"] == "validation/accuracy"
  assert best["value"] == max(accuracies.values())
  assert best["step"] == min(s for s, a in accuracies.items() if a == best["value"])
  at_best = inference.evaluate(config, workdir, "validation", step="best")
  assert at_best["step"] == best["step"] and at_best["validation"]["accuracy"] == best["value"]


@pytest.mark.slow
def test_predict_mode_on_a_split_and_on_image_files(finished_run, tmp_path):
  from PIL import Image
  config, workdir, results = finished_run
  path = inference.predict(config, workdir, "test")
  with open(path) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == results["metrics"]["test"]["count"]
  accuracy = np.mean([r["label"] == r["predicted"] for r in rows])
  assert accuracy == pytest.approx(results["test_accuracy"])
  probabilities = np.array([[float(r[f"p_{c}"]) for c in range(10)] for r in rows])
  np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)

  # The same test images as PNG files (8-bit, so a little rounding) predict the same.
  setup = Programs(config)
  files = []
  for i in range(6):
    pixels = np.rint(setup.data.test.inputs[i, ..., 0] * 255).astype(np.uint8)
    files.append(str(tmp_path / f"digit{i}.png"))
    Image.fromarray(pixels).save(files[-1])
  path = inference.predict(config, workdir, files=files)
  with open(path) as f:
    from_files = list(csv.DictReader(f))
  assert [r["file"] for r in from_files] == files
  confident = [i for i in range(6) if float(rows[i]["confidence"]) > 0.9]
  assert confident
  for i in confident:
    assert from_files[i]["predicted"] == rows[i]["predicted"]


@pytest.mark.slow
def test_eval_and_predict_through_run_py_with_the_best_step_and_a_split(finished_run):
  import subprocess
  import sys
  from conftest import REPO_ROOT
  config, workdir, results = finished_run
  run = lambda *args: subprocess.run([sys.executable, "run.py", f"--workdir={workdir}",
                                      "--compilation_cache=", *args], cwd=REPO_ROOT,
                                     capture_output=True, text=True, timeout=300)
  proc = run("--mode=eval", "--step=best", "--split=validation")
  assert proc.returncode == 0, proc.stderr[-3000:]
  evaluated = json.loads(open(os.path.join(workdir, "eval_results.json")).read())
  best = results["best_checkpoint"]
  assert evaluated["step"] == best["step"] and sorted(evaluated) == ["checkpoint", "step",
                                                                     "validation"]
  assert evaluated["validation"]["accuracy"] == pytest.approx(best["value"])
  proc = run("--mode=predict", "--split=validation")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "predictions_validation.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == results["metrics"]["validation"]["count"]
  accuracy = np.mean([r["label"] == r["predicted"] for r in rows])
  assert accuracy == pytest.approx(results["metrics"]["validation"]["accuracy"])


@pytest.mark.slow
def test_predict_on_an_unreadable_image(finished_run, tmp_path):
  config, workdir, _ = finished_run
  bad = tmp_path / "notes.png"
  bad.write_text("not an image")
  with pytest.raises(ValueError, match="Cannot decode .*notes.png as an image"):
    inference.predict(config, workdir, files=[str(bad)])
  with pytest.raises(FileNotFoundError, match="no such image file"):
    inference.predict(config, workdir, files=[str(tmp_path / "missing.png")])


@pytest.mark.slow
def test_eval_of_a_step_that_does_not_exist(finished_run):
  config, workdir, _ = finished_run
  with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 7; it has steps \["):
    inference.evaluate(config, workdir, step=7)


@pytest.mark.slow
def test_stop_when_a_target_is_reached_and_stay_stopped(tmp_path):
  config = _config(**{"train.num_epochs": 10, "train.stop_when": "validation/accuracy>=0.5"})
  results = train.run(config, str(tmp_path))
  steps_per_epoch = results["steps"]  # accuracy passes 0.5 after the first epoch
  assert results["stopped_early"] == "validation/accuracy reached >= 0.5"
  assert steps_per_epoch == 1294 // 32  # digits: 1,294 training examples, batch 32
  again = train.run(config, str(tmp_path))  # the same workdir: nothing more to train
  assert again["steps"] == steps_per_epoch and again["resumed_from_step"] == steps_per_epoch


def test_num_steps_ends_mid_epoch(tmp_path):
  results = train.run(_config(**{"train.num_steps": 50, "report.plots": False,
                                 "report.html": False,
                                 "checkpoint.min_interval_seconds": 0.0}), str(tmp_path))
  assert results["steps"] == 50 and results["epochs"] == 2
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["40", "50"]  # epoch end, then end
  assert not os.path.exists(tmp_path / "report.html")


def test_early_stopping_through_the_driver_on_a_scripted_metric(tmp_path):
  scripted = iter([0.50, 0.60, 0.55, 0.58, 0.59, 0.9, 0.9, 0.9])

  # (The config check before training computes metrics on placeholder sums, count 1: not
  # part of the script.)
  metrics.METRICS.register("scripted")(metrics.Metric(
      ("count",), lambda t: {"scripted": next(scripted) if t["count"] > 8 else 0.0}))
  try:
    config = _config(**{"train.num_epochs": 8, "eval.metrics": "accuracy,scripted",
                        "eval.at_end": "validation", "train.early_stopping.metric":
                        "validation/scripted", "train.early_stopping.patience": 3,
                        "report.plots": False, "report.html": False})
    results = train.run(config, str(tmp_path))
  finally:
    metrics.METRICS.unregister("scripted")
  # Best 0.60 after epoch 2; epochs 3, 4 and 5 do not improve on it: stop after epoch 5.
  assert results["steps"] == 5 * 40 and results["epochs"] == 8
  assert results["stopped_early"].startswith("early stopping: validation/scripted")


@pytest.mark.parametrize("spec", ["loss,accuracy", "loss,accuracy,top5_accuracy,precision,"
                                  "recall,f1,support,confusion_matrix"])
def test_metric_names_known_before_training_are_the_ones_evaluation_gives(spec):
  setup = Programs(_config(**{"eval.metrics": spec}))
  evaluated = setup.evaluate(setup.initial_state, "validation")
  assert setup.metric_value_names() == set(metrics.scalars(evaluated))


def test_evaluation_that_keeps_the_outputs_gives_the_same_metrics_and_outputs():
  setup = Programs(_config())
  state = setup.initial_state
  images, labels = setup.splits["test"]
  assert len(labels) % setup.eval_batch_size  # a padded last batch, trimmed from the outputs
  values, outputs = setup.evaluate(state, "test", with_outputs=True)
  assert values == setup.evaluate(state, "test")
  assert outputs.shape == (len(labels), 10) and outputs.dtype == np.float32
  np.testing.assert_allclose(outputs, setup.outputs(state, images), rtol=1e-6, atol=1e-6)
  assert (outputs.argmax(-1) == np.asarray(labels)).mean() == pytest.approx(values["accuracy"])


@pytest.mark.slow
@pytest.mark.parametrize("every_epoch, passes", [("validation", 1), ("validation,test", 2)])
def test_pictures_use_the_final_evaluations_outputs(every_epoch, passes, tmp_path, monkeypatch):
  """The test split's final evaluation keeps the model's outputs for the pictures; only a
  split already evaluated at the last step (so not evaluated again) needs a pass of its own."""
  test_passes = []
  evaluate, outputs = Programs.evaluate, Programs.outputs

  def counted_evaluate(self, state, split, **kwargs):
    test_passes.extend([split] if split == "test" else [])
    return evaluate(self, state, split, **kwargs)

  def counted_outputs(self, state, images):
    test_passes.append("outputs")
    return outputs(self, state, images)

  monkeypatch.setattr(Programs, "evaluate", counted_evaluate)
  monkeypatch.setattr(Programs, "outputs", counted_outputs)
  config = _config(**{"train.num_epochs": 1, "eval.every_epoch": every_epoch})
  train.run(config, str(tmp_path))
  assert test_passes == ["test"] * passes
  assert os.path.getsize(tmp_path / "confident_mistakes_test.png") > 1000


def test_bad_metric_and_split_names_fail_before_training(tmp_path):
  with pytest.raises(ConfigError, match=r'Unknown metric "acc".*Known metrics'):
    train.run(_config(**{"eval.metrics": "loss,acc"}), str(tmp_path / "a"))
  with pytest.raises(ConfigError, match='split "valid", which this data does not have. '
                                        'Did you mean "validation"'):
    train.run(_config(**{"eval.every_epoch": "valid"}), str(tmp_path / "b"))
  with pytest.raises(ConfigError, match='no metric "acc"'):
    train.run(_config(**{"checkpoint.best_metric": "validation/acc"}), str(tmp_path / "c"))


@pytest.mark.slow
def test_a_regression_config_end_to_end(tmp_path):
  from configs import diabetes
  config = diabetes.get_config()
  with config.unlocked():
    config.train.num_epochs = 40
  workdir = str(tmp_path)
  results = train.run(config, workdir)
  test = results["metrics"]["test"]
  assert set(test) == {"count", "loss", "mse", "mae", "r2"} and test["count"] == 88
  assert test["mse"] == pytest.approx(test["loss"])  # the loss is the MSE
  assert test["r2"] > 0.3, test  # measured 0.50 after the config's 100 epochs
  assert "train_accuracy" not in results and results["best_checkpoint"]["metric"] == "validation/r2"
  assert os.path.exists(os.path.join(workdir, "predicted_vs_true_test.png"))
  assert "test r2" in open(os.path.join(workdir, "report.html")).read()

  assert inference.evaluate(config, workdir, "test")["test"] == test
  with open(inference.predict(config, workdir, "test")) as f:
    rows = list(csv.DictReader(f))
  errors = np.array([float(r["prediction"]) - float(r["target"]) for r in rows])
  assert np.mean(errors ** 2) == pytest.approx(test["mse"], rel=1e-4)


def test_regression_targets_need_one_output(tmp_path):
  from configs import diabetes
  config = diabetes.get_config()
  with config.unlocked():
    config.model.num_classes = 10
  with pytest.raises(ConfigError, match="Set --config.model.num_classes=1"):
    train.run(config, str(tmp_path))


def test_progress_bar_and_eta_leave_out_compilation_and_evaluation(monkeypatch):
  from bigjax.outputs import logs as reporting
  clock = [100.0]
  monkeypatch.setattr(reporting.time, "perf_counter", lambda: clock[0])
  progress = reporting.Progress(total_steps=100, batch_size=10)
  assert progress.line(0).startswith("[--------------------]   0% | ETA --")
  progress.start(step=1)  # after the first (compiling) step
  clock[0] += 2.0         # 20 steps in 2 s
  progress.pause()
  clock[0] += 50.0        # evaluation: not training time
  progress.resume()
  assert progress.bar(21) == "[####----------------]  21%"
  assert progress.line(21).endswith("| 100 ex/s | ETA 0:00:08")  # 79 steps at 10/s
  lm = reporting.Progress(total_steps=100, batch_size=10, tokens_per_example=256)
  lm.start(step=0)
  clock[0] += 1.0  # 10 steps of 10 sequences of 256 tokens in 1 s
  assert lm.line(10).endswith("| 100 ex/s 25,600 tokens/s | ETA 0:00:09")


def test_a_run_without_a_validation_split_keeps_no_best_checkpoint(tmp_path):
  results = train.run(_config(**{"data.validation_fraction": 0.0, "train.num_epochs": 1,
                                 "report.plots": False, "report.html": False}), str(tmp_path))
  assert set(results["metrics"]) == {"test"} and results["best_checkpoint"] is None
  assert not os.path.exists(tmp_path / "checkpoints_best")
