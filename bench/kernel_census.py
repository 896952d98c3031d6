"""What the train step's compile time is made of: its fused kernels, and how many distinct.

  python -m bench.kernel_census [--only=SPEC,...] [--groups=12] [--cost]

XLA:CPU compiles each *distinct* fused kernel once (through MLIR and LLVM) and reuses it for
every identical one: same fused computation, same shapes, same parameter order. On this
project's 2-core machine a distinct kernel costs about 9 ms of wall time whatever it
computes (an add or Adam's update alike), an identical one next to nothing (`--cost`
measures both). So a first compile's time follows the count of distinct kernels, not the
model's size or its count of kernels: a Transformer's identical blocks share theirs, while
every parameter shape brings the optimizer's three (mu, nu, the update), and every
one-off op (a gather's scatter-add gradient, a threefry call) brings its own.

For each config: the train step's fused kernels, the distinct ones, and with --groups=N
the N op-name groups (block numbers folded) with the most distinct kernels. Configs whose
data is not offline run on TFDS mock data of the same shapes, as in compile_times.py.
"""

import argparse
import collections
import contextlib
import os
import re
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from bench.compile_times import CONFIGS

_COMPUTATION = re.compile(r"^(%[\w.\-]+) \(.*?\) -> .*? \{\n(.*?)\n\}", re.S | re.M)
_FUSION = re.compile(r" = (\S+) fusion\(.*kind=(k\w+).*calls=(%[\w.\-]+)")


def _canonical(body: str) -> str:
  """A fused computation without names or metadata: what makes two kernels the same."""
  body = re.sub(r", metadata=\{[^}]*\}", "", body)
  return re.sub(r"%[\w.\-]+", "%", body)


def census(hlo_text: str) -> tuple[int, int, collections.Counter]:
  """(fused kernels, distinct ones, distinct ones per op-name group) of optimized HLO."""
  bodies = {m.group(1): _canonical(m.group(2)) for m in _COMPUTATION.finditer(hlo_text)}
  entry = hlo_text[hlo_text.index("\nENTRY"):]
  total, distinct, groups = 0, set(), collections.Counter()
  for line in entry.splitlines():
    m = _FUSION.search(line)
    if not m:
      continue
    shape, kind, calls = m.groups()
    key = (shape, kind, bodies.get(calls, calls))
    total += 1
    if key in distinct:
      continue
    distinct.add(key)
    name = re.search(r'op_name="([^"]*)"', line)
    name = re.sub(r"^jit\([^)]*\)/", "", name.group(1)) if name else "(no op name)"
    groups["/".join(re.sub(r"_\d+\b", "_N", name).split("/")[:3])] += 1
  return total, len(distinct), groups


def _train_step_hlo(spec: str, mock: bool) -> str:
  import jax
  import numpy as np
  from bigjax import cli
  from bigjax.outputs import summary
  from bigjax.training.programs import Programs
  cli._quiet_logs()
  config = summary.load_config_file(os.path.join(ROOT, "configs", spec))
  context = contextlib.nullcontext()
  if mock:
    import tensorflow_datasets as tfds
    context = tfds.testing.mock_data(num_examples=4 * config.train.batch_size)
  with context, contextlib.redirect_stdout(sys.stderr):  # Setup prints its summary
    setup = Programs(config)
  state = setup.initial_state
  images, labels = setup.splits["train"]
  spec_of = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  indices = np.zeros(config.train.batch_size, np.int32)
  lowered = setup.train_on_indices.trace(jax.tree.map(spec_of, state), images, labels,
                                         indices).lower()
  return lowered.compile().as_text()


def _kernel_cost(count: int = 100, repeats: int = 3) -> tuple[float, float]:
  """Seconds per kernel to compile `count` distinct elementwise kernels, and `count`
  identical ones (medians of `repeats` compiles, XLA's in-process cache cleared)."""
  import jax
  import jax.numpy as jnp
  from jax._src.interpreters import pxla
  f = lambda xs: [x / (jnp.sqrt(x) + 1e-8) for x in xs]
  shapes = {"distinct": [(150 + i,) for i in range(count)], "identical": [(150,)] * count}
  seconds = {}
  for name, shape_list in shapes.items():
    lowered = jax.jit(f).trace([jax.ShapeDtypeStruct(s, jnp.float32)
                                for s in shape_list]).lower()
    times = []
    for _ in range(repeats):
      pxla._cached_compilation.cache_clear()  # or the second compile is a cache hit
      lowered._lowering._executable = None
      start = time.perf_counter()
      lowered.compile()
      times.append(time.perf_counter() - start)
    seconds[name] = statistics.median(times) / count
  return seconds["distinct"], seconds["identical"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", default="", help="comma-separated config specs")
  parser.add_argument("--groups", type=int, default=0,
                      help="show the N op-name groups with the most distinct kernels")
  parser.add_argument("--cost", action="store_true",
                      help="also time one distinct and one identical kernel's compile")
  args = parser.parse_args()
  only = [s for s in args.only.split(",") if s]
  unknown = set(only) - {spec for spec, _ in CONFIGS}
  if unknown:
    sys.exit(f"--only: unknown config spec(s) {sorted(unknown)}; known: "
             f"{', '.join(spec for spec, _ in CONFIGS)}")
  if args.cost:
    distinct, identical = _kernel_cost()
    print(f"compile time per kernel: distinct {distinct * 1e3:.1f} ms, identical "
          f"{identical * 1e3:.2f} ms (100 elementwise kernels, median of 3)\n")
  print("| config | fused kernels | distinct |\n|---|---|---|")
  for spec, mock in CONFIGS:
    if only and spec not in only:
      continue
    total, distinct, groups = census(_train_step_hlo(spec, mock))
    print(f"| {spec} | {total} | {distinct} |", flush=True)
    for name, n in groups.most_common(args.groups):
      print(f"|   {name} | | {n} |")


if __name__ == "__main__":
  main()
