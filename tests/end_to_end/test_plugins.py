"""The README's plug-in example, run verbatim through run.py from a module outside bigjax."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


def _python_blocks(page: str) -> dict:
  with open(os.path.join(REPO_ROOT, page)) as f:
    text = f.read()
  return {m.group(1): m.group(0)[len("```python\n"):-len("```")]
          for m in re.finditer(r"```python\n# (\S+)\n.*?```", text, flags=re.S)}


def _readme_python_blocks():
  """The README's plug-in files, and docs/plugins.md's (the README's are the same)."""
  readme, docs = _python_blocks("README.md"), _python_blocks("docs/plugins.md")
  for path in set(readme) & set(docs):
    assert readme[path] == docs[path], f"README.md and docs/plugins.md differ on {path}"
  return {**docs, **readme}


@pytest.mark.slow
def test_readme_plugin_example_trains_through_run_py(tmp_path):
  blocks = _readme_python_blocks()
  assert set(blocks) >= {"myproject/parts.py", "myproject/config.py"}
  for path, code in blocks.items():
    os.makedirs(tmp_path / os.path.dirname(path), exist_ok=True)
    (tmp_path / path).write_text(code)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO_ROOT]))
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, "run.py"),
       f"--config={tmp_path}/myproject/config.py", f"--workdir={workdir}",
       "--config.train.num_epochs=3", "--config.optimizer.max_norm=5.0"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  config = json.loads((workdir / "config.json").read_text())
  assert config["loss"]["name"] == "myproject.parts:squared_hinge"
  assert config["optimizer"]["max_norm"] == 5.0
  assert results["num_params"] == 64 * 10 + 10  # the user's Linear on 8x8 digits
  assert results["test_accuracy"] > 0.85, results  # a linear model on digits: ~0.95


def test_squared_hinge_from_readme_matches_hand_computation(tmp_path):
  import importlib.util
  import jax.numpy as jnp
  code = _readme_python_blocks()["myproject/parts.py"]
  (tmp_path / "parts.py").write_text(code)
  spec = importlib.util.spec_from_file_location("readme_parts", tmp_path / "parts.py")
  parts = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(parts)
  logits = jnp.array([[2.0, 1.5, -1.0]])
  # label 0: max(0, 1 + 1.5 - 2)^2 + max(0, 1 - 1 - 2)^2 = 0.25 + 0
  assert float(parts.squared_hinge(logits, {"label": jnp.array([0])})[0]) == 0.25


@pytest.mark.slow
def test_readme_registered_focal_loss_trains_and_reduces_to_cross_entropy(tmp_path):
  import importlib.util
  import jax.numpy as jnp
  import numpy as np
  from bigjax import train
  from bigjax.core import losses
  from configs import digits
  code = _readme_python_blocks()["myproject/focal.py"]
  (tmp_path / "focal.py").write_text(code)
  spec = importlib.util.spec_from_file_location("readme_focal", tmp_path / "focal.py")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)  # registers "focal"
    logits, batch = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]), {"label": jnp.array([0, 2])}
    cross_entropy = losses.softmax_cross_entropy(logits, batch)
    np.testing.assert_allclose(module.focal_loss(logits, batch, gamma=0.0), cross_entropy,
                               rtol=1e-6)
    assert bool(jnp.all(module.focal_loss(logits, batch) < cross_entropy))
    config = digits.get_config()
    with config.unlocked():
      config.loss = dict(name="focal", gamma=2.0)
      config.train.num_epochs = 5
    results = train.run(config, str(tmp_path / "run"))
    assert results["test_accuracy"] > 0.85, results
  finally:
    losses.LOSSES.unregister("focal")
