"""bench/accelerator.py's --dry-run: every part of the prepared GPU benchmark at toy sizes on
the CPU, so the script that spends the rare GPU minutes cannot rot between them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_dry_run_measures_every_part_and_writes_the_report(tmp_path, fashion_mnist_dir):
  done = subprocess.run(
      [sys.executable, "-m", "bench.accelerator", "--dry-run", f"--out_dir={tmp_path}",
       f"--data={fashion_mnist_dir}"], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(tmp_path / "accelerator_cpu.jsonl") as f:
    records = [json.loads(line) for line in f]
  failed = [r for r in records if "error" in r or "skipped" in r]
  assert not failed, failed
  by = {}
  for r in records:
    by.setdefault(r["part"], []).append(r)
  assert set(by) == {"environment", "fashion_mnist", "largest_gpt", "throughput", "lm",
                     "layers"}

  env = by["environment"][0]
  assert env["backend"] == "cpu" and env["jax"] and env["date"]

  fashion = by["fashion_mnist"][0]  # the dry run stops after one recipe
  assert len(by["fashion_mnist"]) == 1
  assert 0.0 <= fashion["test_accuracy"] <= 1.0
  assert fashion["reached"] == (fashion["test_accuracy"] >= 0.93)
  assert len(fashion["test_accuracy_by_epoch"]) == fashion["epochs_run"] == 1
  assert fashion["test_accuracy_by_epoch"][-1] == pytest.approx(fashion["test_accuracy"],
                                                                abs=1e-4)
  assert 0 < fashion["train_seconds"] < fashion["wall_seconds_from_command_start"]

  pairs = {(r["config"], r["dtype"]) for r in by["throughput"]}
  assert pairs == {("mlp", "float32")} | {(c, "bfloat16") for c in (
      "mlp", "cnn", "resnet20", "resnet18_32x32", "vit_cifar")}
  for r in by["throughput"] + by["lm"] + by["layers"]:
    assert r["examples_per_second"] > 0 and r["loss_finite"], r

  assert {(r["batch_size"], r["remat"]) for r in by["lm"]} == {(2, False), (2, True)}
  for r in by["lm"]:  # tokens/s is examples/s times the sequence length; no peak on a CPU
    assert r["tokens_per_second"] == pytest.approx(r["examples_per_second"] * r["seq_len"],
                                                   rel=1e-3)
    assert r["mfu"] is None

  kernels = {(r["config"], r["kernels"]) for r in by["layers"]}
  assert kernels == {(c, k) for c in ("mlp_dropout", "cnn", "resnet20", "vit_cifar")
                     for k in ("bigjax", "stock")}

  probes = [r for r in by["largest_gpt"] if not r.get("summary")]
  assert [(r["width"], r["fits"]) for r in probes] == [(32, True), (64, True)]
  assert probes[1]["params"] > probes[0]["params"]
  assert by["largest_gpt"][-1]["largest"] == {"width": 64, "depth": 1, "heads": 2}

  report = (tmp_path / "accelerator_cpu.md").read_text()
  for heading in ("## Targets", "## Fashion-MNIST to 0.93", "## Train-step throughput",
                  "## lm_small in bfloat16", "## bigjax's own kernels",
                  "## The largest GPT on one device"):
    assert heading in report
  assert "Fashion-MNIST 0.93 test accuracy in 2 s of training: **not met**" in report


def test_unknown_part_is_one_line(tmp_path):
  done = subprocess.run([sys.executable, "-m", "bench.accelerator", "--dry-run",
                         "--parts=throughput,lmm", f"--out_dir={tmp_path}"], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode != 0
  assert "Unknown --parts ['lmm']" in done.stderr
  assert not os.path.exists(tmp_path / "accelerator_cpu.jsonl")
