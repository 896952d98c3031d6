"""Knowledge distillation (Hinton et al. 2015): a student trained against a frozen teacher.

`config.distill.teacher=WORKDIR` names any finished bigjax run (or a run that imported a
checkpoint); the teacher is rebuilt from that workdir alone (bigjax.inference.portable) and
its forward pass runs inside the student's jitted train step, on the very (augmented)
inputs the student sees. The training loss per example is

    alpha * hard_loss(student, labels)
      + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T)),

T the temperature (the T^2 keeps the soft term's gradients on the hard term's scale).
Evaluation keeps the plain loss, so the student's metrics compare with a student trained
from scratch.
"""

from __future__ import annotations

import functools
import logging as py_logging
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bigjax.inference import portable
from bigjax.registry import ConfigError

logging = py_logging.getLogger(__name__)


def is_on(distill_config: Mapping[str, Any] | None) -> bool:
  return bool(distill_config) and bool(distill_config.get("teacher"))


def soft_loss(student_logits: jax.Array, teacher_logits: jax.Array,
              temperature: float) -> jax.Array:
  """T^2 KL(softmax(teacher/T) || softmax(student/T)) per example."""
  t = temperature
  teacher_log_p = jax.nn.log_softmax(teacher_logits / t, axis=-1)
  student_log_p = jax.nn.log_softmax(student_logits / t, axis=-1)
  kl = jnp.sum(jnp.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1)
  return (t * t) * kl


def load_teacher(distill_config: Mapping[str, Any], data) -> portable.Predictor:
  """The teacher run, checked against the student's data: same input shape, same classes."""
  from bigjax.train import load_run_config
  workdir = distill_config["teacher"]
  teacher_config = load_run_config(workdir)
  from bigjax import registry
  import os
  registry.check_no_plugins(os.path.join(workdir, "config.json"), teacher_config)
  teacher = portable.load(workdir, teacher_config, distill_config.get("step", "latest"))
  spec = teacher.spec
  student_shape = list(np.shape(data.train.inputs)[1:])
  if spec["input_shape"] != student_shape:
    raise ConfigError(
        f"The teacher {workdir} takes inputs of shape {spec['input_shape']}, the student's data "
        f"has {student_shape}: distill from a teacher trained on the same inputs.")
  if spec["task"] != "classification" or list(spec["class_names"]) != list(data.class_names):
    raise ConfigError(
        f"The teacher {workdir} has classes {spec['class_names'][:12]} and the student's data "
        f"{list(data.class_names)[:12]}: a teacher must predict the student's classes, in "
        "the same order.")
  logging.info("distilling from %s (step %d, %s)", workdir, teacher.step,
               teacher_config.model.name)
  return teacher


def _to_teacher_inputs(student_stats: Mapping[str, Any], teacher_spec: Mapping[str, Any]
                       ) -> Callable[[jax.Array], jax.Array]:
  """Student-prepared images -> the teacher's preparation (their standardisations differ)."""
  def undo(x):
    if "mean" in student_stats:
      x = x * jnp.asarray(student_stats["std"], x.dtype) + jnp.asarray(student_stats["mean"],
                                                                         x.dtype)
    if "mean" in teacher_spec:
      x = ((x - jnp.asarray(teacher_spec["mean"], x.dtype))
           / jnp.asarray(teacher_spec["std"], x.dtype))
    return x
  return undo


def wrap_loss(loss_fn: Callable, distill_config: Mapping[str, Any], data) -> Callable:
  """The student's training loss: the hard loss mixed with the teacher's soft targets."""
  alpha = float(distill_config.get("alpha", 0.5))
  temperature = float(distill_config.get("temperature", 4.0))
  if not 0.0 <= alpha <= 1.0 or temperature <= 0:
    raise ConfigError(f"config.distill: alpha={alpha}, temperature={temperature}: use "
                      "0 <= alpha <= 1 (the hard-label loss's weight) and temperature > 0.")
  teacher = load_teacher(distill_config, data)
  prepare = _to_teacher_inputs(data.stats, teacher.spec)
  variables = teacher.variables

  def distilled(outputs: jax.Array, batch: dict, **kwargs) -> jax.Array:
    teacher_logits = jax.lax.stop_gradient(
        teacher.apply(variables, prepare(batch["image"])).astype(jnp.float32))
    hard = loss_fn(outputs, batch, **kwargs)
    return alpha * hard + (1.0 - alpha) * soft_loss(outputs.astype(jnp.float32),
                                                    teacher_logits, temperature)

  functools.update_wrapper(distilled, loss_fn)
  distilled.__name__ = f"distilled_{getattr(loss_fn, '__name__', 'loss')}"
  return distilled
