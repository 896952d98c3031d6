"""Golden outputs: a fixed set of short runs, their metrics and a hash of their parameters,
so a refactor can show it changed no result (bit for bit on the same machine).

    python -m bench.golden --write=bench/results/golden_cpu2.json   # before
    python -m bench.golden --check=bench/results/golden_cpu2.json   # after: exit 1 if any differ

The runs: the lessons' MLP and CNN, ResNet-20 and a ViT on Fashion-MNIST (Debian's files), a
tiny GPT on Debian's fortunes, a LoRA fine-tune of the MLP, a run stopped and resumed, and
(in a subprocess with 8 fake CPU devices) pmap and FSDP runs on scikit-learn's digits. Each
is a few seconds to a minute on a 2-core CPU. Bit-identical holds on one machine and library
set; another CPU or jax version may round differently.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FORTUNES = "/usr/share/games/fortunes"


def _params_hash(workdir: str) -> tuple[int, str]:
  import jax
  from bigjax.training import checkpoint
  step, params = checkpoint.latest_params(workdir)
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return step, digest.hexdigest()[:16]


def _override(config, **values):
  """`train__num_steps=40` sets config.train.num_steps (keyword arguments cannot hold dots)."""
  with config.unlocked():
    config.update_from_flattened_dict({k.replace("__", "."): v for k, v in values.items()})
  return config


def _quiet(config):
  return _override(config, report__plots=False, report__html=False,
                   report__tensorboard=False)


def single_device_runs(root: str) -> dict:
  from bigjax import train
  from configs import fashion_mnist, fashion_mnist_resnet, lm_tiny
  runs = {
      "mlp": fashion_mnist.get_config("mlp,small"),
      "cnn": fashion_mnist.get_config("cnn,small"),
      "resnet20": _override(fashion_mnist_resnet.get_config("resnet20,small"),
                            train__num_steps=40),
      "vit": _override(fashion_mnist.get_config("mlp,small"),
                       model=dict(name="vit", patch_size=7, hidden_size=32, depth=2,
                                  num_heads=2, mlp_ratio=2.0, pool="cls", dropout_rate=0.0,
                                  num_classes=10), train__num_steps=40),
      "lm_tiny": _override(lm_tiny.get_config("small"), train__num_steps=40),
  }
  out = {}
  for name, config in runs.items():
    workdir = os.path.join(root, name)
    out[name] = _summary(train.run(_quiet(config), workdir), workdir)
  # A LoRA fine-tune of the MLP above.
  lora = _override(fashion_mnist.get_config("mlp,small"), init_from__path=os.path.join(
      root, "mlp"), lora__rank=4, lora__train_base="head", train__num_steps=30)
  out["lora"] = _summary(train.run(_quiet(lora), os.path.join(root, "lora")),
                         os.path.join(root, "lora"))
  # Stopped at step 30, resumed to 60.
  resumed = os.path.join(root, "resumed")
  train.run(_quiet(_override(fashion_mnist.get_config("mlp,small"), train__num_steps=30)),
            resumed)
  out["resumed"] = _summary(train.run(_quiet(_override(
      fashion_mnist.get_config("mlp,small"), train__num_steps=60)), resumed), resumed)
  return out


def eight_device_runs(root: str) -> dict:
  from bigjax import train
  from configs import digits
  runs = {"pmap8": dict(mode="pmap"),
          "fsdp8": dict(mesh=dict(data=2, fsdp=4), fsdp_min_size=1000)}
  out = {}
  for name, parallel in runs.items():
    config = _override(digits.get_config(), train__num_steps=40, train__steps_per_call=1)
    with config.unlocked():
      config.parallel.update(parallel)
    workdir = os.path.join(root, name)
    out[name] = _summary(train.run(_quiet(config), workdir), workdir)
  return out


def _summary(results: dict, workdir: str) -> dict:
  step, digest = _params_hash(workdir)
  return {"step": step, "params_sha256": digest,
          "metrics": {split: {k: v for k, v in values.items() if isinstance(v, (int, float))}
                      for split, values in results["metrics"].items()}}


def collect() -> dict:
  for path, what in ((FASHION_MNIST, "apt-get install dataset-fashion-mnist"),
                     (FORTUNES, "apt-get install fortunes")):
    if not os.path.isdir(path):
      raise SystemExit(f"{path} is missing: {what}")
  with tempfile.TemporaryDirectory(prefix="bigjax_golden_") as root:
    out = single_device_runs(root)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", BIGJAX_COMPILATION_CACHE="")
    proc = subprocess.run([sys.executable, "-m", "bench.golden", "--eight-devices",
                           os.path.join(root, "eight")], env=env, capture_output=True,
                          text=True)
    if proc.returncode:
      raise SystemExit(proc.stderr[-3000:])
    out.update(json.loads(proc.stdout.strip().splitlines()[-1]))
  return out


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--write", help="record the outputs in this JSON file")
  parser.add_argument("--check", help="compare the outputs with this JSON file")
  parser.add_argument("--eight-devices", help=argparse.SUPPRESS)  # the subprocess's part
  args = parser.parse_args()
  if args.eight_devices:
    print(json.dumps(eight_device_runs(args.eight_devices)))
    return 0
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["BIGJAX_COMPILATION_CACHE"] = ""
  out = collect()
  if args.write:
    with open(args.write, "w") as f:
      json.dump(out, f, indent=1, sort_keys=True)
  if args.check:
    with open(args.check) as f:
      expected = json.load(f)
    differ = [name for name in expected if out.get(name) != expected[name]]
    for name in expected:
      print(f"{'same   ' if name not in differ else 'DIFFERS'} {name}")
      if name in differ:
        print(f"  expected {expected[name]}\n  got      {out.get(name)}")
    return 1 if differ else 0
  print(json.dumps(out, indent=1, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
