"""Gather here what a bare GPU machine lacks for `bench.accelerator`, and print the command
to run there.

  python -m bench.prepare_accelerator [--data=/usr/share/datasets/fashion-mnist]

That machine (Python 3.12 with jax, flax, optax, orbax-checkpoint, chex, absl-py, PyYAML,
matplotlib and Pillow; no network) lacks ml_collections and the Fashion-MNIST files. This
downloads the missing wheels for Python 3.12 manylinux into .whl/ and copies the four IDX
files into .fmnist/, both ignored by git (.git/info/exclude) and carried beside the tree
(under 64 MiB together). Safe to rerun.
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
import shutil
import subprocess
import sys

from absl import app, flags

flags.DEFINE_string("data", "/usr/share/datasets/fashion-mnist",
                    "Folder of Fashion-MNIST's IDX .gz files (Debian's dataset-fashion-mnist).")
FLAGS = flags.FLAGS

WHEELS = "whl"   # folders in the repository's root, as .whl/ and .fmnist/
DATA = "fmnist"
# What bigjax imports that the GPU image lacks (its package list: the device tool's KINDS.md).
MISSING = ("ml_collections",)
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")

COMMAND = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "
           "--upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD "
           "PYTHONUNBUFFERED=1 && python3 -m bench.accelerator --data=.fmnist "
           "--out_dir=$OUT 2>&1 | tee $OUT/log.txt")


def _ignore(root: str, names: list[str]) -> None:
  exclude = os.path.join(root, ".git", "info", "exclude")
  have = open(exclude).read().split() if os.path.exists(exclude) else []
  with open(exclude, "a") as f:
    for name in names:
      if f"/.{name}/" not in have:
        f.write(f"/.{name}/\n")


def main(argv):
  del argv
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  _ignore(root, [WHEELS, DATA])
  wheels, data = os.path.join(root, "." + WHEELS), os.path.join(root, "." + DATA)
  shutil.rmtree(wheels, ignore_errors=True)
  os.makedirs(wheels)
  for name in MISSING:
    version = importlib.metadata.version(name)
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
               "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
               *[a for p in PLATFORMS for a in ("--platform", p)], "-d", wheels,
               f"{name}=={version}"]
    subprocess.run(command, check=True)
  missing = [f for f in IDX_FILES if not os.path.exists(os.path.join(FLAGS.data, f))]
  if missing:
    raise SystemExit(f"bigjax: error: {FLAGS.data} lacks {', '.join(missing)}; install "
                     "Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
                     "or pass --data=FOLDER.")
  os.makedirs(data, exist_ok=True)
  for name in IDX_FILES:
    shutil.copyfile(os.path.join(FLAGS.data, name), os.path.join(data, name))
  size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(wheels, "*")) +
             glob.glob(os.path.join(data, "*")))
  print(f"Ready: .{WHEELS}/ ({', '.join(sorted(os.listdir(wheels)))}) and .{DATA}/ "
        f"({size / 2 ** 20:.1f} MiB together).\n"
        f"On the GPU machine (device tool: carry=[\".{WHEELS}\", \".{DATA}\"], timeout_s=560):\n"
        f"  {COMMAND}\n"
        "Then copy $OUT's accelerator_<device>.md and .jsonl into bench/results/.")


if __name__ == "__main__":
  app.run(main)
