"""Model families, chosen by `config.model.name`; the other `config.model` keys are the
family's fields. A model is any Flax Linen module called as `model.apply(variables, x, train=...)`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import flax.linen as nn
import jax

from bigjax.models.autoencoder import DenoisingAutoencoder
from bigjax.models.bert import BERT
from bigjax.models.cnn import CNN
from bigjax.models.contrastive import Projected
from bigjax.models.gpt import GPT
from bigjax.models.mae import MAE
from bigjax.models.mlp import MLP
from bigjax.models.resnet import ResNet
from bigjax.models.resnet import ResNet18
from bigjax.models.resnet import ResNet20
from bigjax.models.resnet import ResNet32
from bigjax.models.resnet import ResNet34
from bigjax.models.resnet import ResNet50
from bigjax.models.resnet import ResNet56
from bigjax.models.resnet import ResNet101
from bigjax.models.resnet import ResNet152
from bigjax.models.vit import ViT
from bigjax.registry import check_keys
from bigjax.registry import ConfigError
from bigjax.registry import Registry

MODELS = Registry("model")
MODELS.register("mlp")(MLP)
MODELS.register("cnn")(CNN)
MODELS.register("resnet")(ResNet)
MODELS.register("vit")(ViT)
MODELS.register("gpt")(GPT)
MODELS.register("bert")(BERT)
MODELS.register("denoising_autoencoder")(DenoisingAutoencoder)
MODELS.register("projected")(Projected)
MODELS.register("mae")(MAE)
for _name, _cls in {"resnet20": ResNet20, "resnet32": ResNet32, "resnet56": ResNet56,
                    "resnet18": ResNet18, "resnet34": ResNet34, "resnet50": ResNet50,
                    "resnet101": ResNet101, "resnet152": ResNet152}.items():
  MODELS.register(_name)(_cls)

register_model = MODELS.register


SIZE_KEY = re.compile(r"(size|sizes|features|depth|heads|classes|length)$")


def _module_fields(cls) -> list[str]:
  return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


def build_model(model_config: Mapping[str, Any], where: str = "config.model") -> nn.Module:
  """Builds the Linen module named by `model_config["name"]` from the remaining keys
  (`where`: the config group errors name)."""
  kwargs = dict(model_config)
  name = kwargs.pop("name")
  cls = MODELS.get(name)
  if dataclasses.is_dataclass(cls):
    check_keys("model", name, _module_fields(cls), kwargs, where)
  # ConfigDict turns tuples into lists; Linen modules want hashable fields.
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  for key, value in kwargs.items():  # widths, depths, counts: a JAX shape error otherwise
    values = value if isinstance(value, tuple) else (value,)
    if SIZE_KEY.search(key) and any(isinstance(v, int) and not isinstance(v, bool) and v < 1
                                    for v in values):
      raise ConfigError(f"{where}.{key}={value}: sizes, widths, depths and counts must "
                        "be positive integers.")
  return cls(**kwargs)


def init_variables(model: nn.Module, rng: jax.Array, example_x: jax.Array) -> dict:
  """Pure: the model's variables (params and any state such as batch statistics).

  `example_x` only supplies shapes; one example is enough.
  """
  rngs = _init_rngs(rng)
  if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((rng, example_x))):
    # traced (e.g. under eval_shape): nothing compiles
    return dict(_jitted_init(model)(rngs, example_x))
  options = INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else {}
  compiled = _jitted_init(model).lower(rngs, example_x).compile(compiler_options=options)
  return dict(compiled(rngs, example_x))


def _init_rngs(rng: jax.Array) -> dict:
  params_rng, dropout_rng = jax.random.split(rng)
  return {"params": params_rng, "dropout": dropout_rng}


def _jitted_init(model: nn.Module):
  # Compiled: run op by op, a ResNet's init takes seconds; the draws are the same either way.
  return jax.jit(lambda rngs, x: model.init(rngs, x, train=False))


# Init runs once, and most of its compile time on CPUs is LLVM optimising the random-bit
# generator (threefry) of every parameter draw: at level 1 a ResNet's init compiles several
# times faster and draws the same bits (tests/models/test_models.py checks every initialiser).
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}
