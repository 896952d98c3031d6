"""Distillation: the soft term is T^2 KL(teacher || student); a student with no label signal
at all learns the task from the teacher alone; a teacher of other classes or inputs is one
line."""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp
import pytest

from bigjax import train
from bigjax.compression import distillation
from bigjax.registry import ConfigError
from conftest import digits_config as _digits


def test_the_soft_loss_is_t_squared_kl():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(4, 5)), 3 * rng.normal(size=(4, 5))
  t = 2.5
  p = np.exp(teacher / t) / np.exp(teacher / t).sum(-1, keepdims=True)
  q = np.exp(student / t) / np.exp(student / t).sum(-1, keepdims=True)
  expected = t * t * (p * (np.log(p) - np.log(q))).sum(-1)
  got = distillation.soft_loss(jnp.asarray(student), jnp.asarray(teacher), t)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  np.testing.assert_allclose(distillation.soft_loss(jnp.asarray(teacher), jnp.asarray(teacher),
                                                    t), 0.0, atol=1e-6)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("teacher"))
  results = train.run(_digits(**{"train.num_epochs": 15}), workdir)
  assert results["test_accuracy"] > 0.95
  return workdir


def _shuffled_labels_npz(path) -> str:
  """sklearn's digits as uint8 [0, 255] images whose *training* labels are a random
  permutation: no label signal to learn from; the test labels are true."""
  from sklearn.datasets import load_digits
  images, labels = load_digits(return_X_y=True)
  images = np.rint(images.reshape(-1, 8, 8, 1) * 255 / 16).astype(np.uint8)
  rng = np.random.default_rng(0)
  order = rng.permutation(len(labels))
  images, labels = images[order], labels[order]
  n_test = 359
  np.savez(path, train_images=images[n_test:], train_labels=rng.permutation(labels[n_test:]),
           test_images=images[:n_test], test_labels=labels[:n_test])
  return str(path)


@pytest.mark.slow
def test_a_student_without_labels_learns_from_the_teacher_alone(teacher, tmp_path):
  data = _shuffled_labels_npz(tmp_path / "shuffled.npz")
  common = {"data.source": "arrays", "data.path": data, "train.num_epochs": 15,
            "model.hidden_sizes": (32,)}
  alone = train.run(_digits(**common), str(tmp_path / "alone"))
  assert alone["test_accuracy"] < 0.3  # the shuffled labels teach nothing
  taught = train.run(_digits(**common, **{"distill.teacher": teacher, "distill.alpha": 0.0,
                                          "distill.temperature": 2.0}),
                     str(tmp_path / "taught"))
  assert taught["test_accuracy"] > 0.85  # the teacher's outputs alone taught the classes
  from bigjax import registry  # reading the teacher's config.json left plug-ins allowed
  assert registry._untrusted_source is None


@pytest.mark.slow
def test_a_teacher_of_other_classes_or_inputs_is_refused(teacher, tmp_path):
  with pytest.raises(ConfigError, match="a teacher must predict the student's classes"):
    train.run(_digits(**{"distill.teacher": teacher, "data.classes": (0, 1, 2)}),
              str(tmp_path / "a"))
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "big.npz", train_images=rng.integers(0, 255, (60, 12, 12, 1), np.uint8),
           train_labels=np.arange(60) % 10)
  with pytest.raises(ConfigError, match=r"inputs of shape \[8, 8, 1\], the student's data has "
                     r"\[12, 12, 1\]"):
    train.run(_digits(**{"distill.teacher": teacher, "data.source": "arrays",
                         "data.path": str(tmp_path / "big.npz")}), str(tmp_path / "b"))
  with pytest.raises(ConfigError, match="alpha=1.5"):
    train.run(_digits(**{"distill.teacher": teacher, "distill.alpha": 1.5}),
              str(tmp_path / "c"))
