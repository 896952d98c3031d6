"""Does the test suite catch real bugs? Each mutation below is a small deliberate bug put
into a copy of the code; the tests named with it must then fail ("caught").

    python -m bench.mutations                 # every mutation
    python -m bench.mutations --only=grads    # those whose name contains "grads"

Prints one line per mutation (caught / SURVIVED and the time) and exits 1 if any survived.
Not run in CI: each mutation runs its tests in a fresh process (minutes in all).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  path: str      # relative to the repository's root
  old: str       # must occur exactly once in the file
  new: str
  tests: tuple[str, ...]  # pytest node ids or files that must catch it


MUTATIONS = (
    Mutation("grads divided by the padded batch size", "bigjax/core/steps.py",
             "grads = jax.tree.map(lambda g: g / denominator.astype(g.dtype), grads)",
             "grads = jax.tree.map(lambda g: g / g.dtype.type(batch['image'].shape[0]), "
             "grads)",
             ("tests/core/test_steps.py",)),
    Mutation("grads not divided at all", "bigjax/core/steps.py",
             "grads = jax.tree.map(lambda g: g / denominator.astype(g.dtype), grads)",
             "grads = grads",
             ("tests/core/test_steps.py",)),
    Mutation("mixup pairs every image with the same partner", "bigjax/data/augment.py",
             "mixed = weight * images + (1.0 - weight) * images[partner]",
             "mixed = weight * images + (1.0 - weight) * images[partner[0]]",
             ("tests/data/test_augment.py",)),
    Mutation("bfloat16 compute multiplies its input by 0", "bigjax/core/steps.py",
             "params, x = cast_floats(params, compute_dtype), cast_floats(x, compute_dtype)",
             "params, x = cast_floats(params, compute_dtype), cast_floats(x * 0, "
             "compute_dtype)",
             ("tests/sharding/test_parallel.py::test_bfloat16_compute_keeps_float32_params",)),
    Mutation("nesterov without Nesterov", "bigjax/core/optimizers.py",
             "return optax.sgd(learning_rate, momentum=momentum, nesterov=True)",
             "return optax.sgd(learning_rate, momentum=momentum, nesterov=False)",
             ("tests/core/test_optimizers.py",)),
    Mutation("eval ignores the padding mask", "bigjax/core/steps.py",
             '  if "mask" in batch:\n    weights = weights * batch["mask"]\n', "",
             ("tests/core/test_steps.py",)),
    Mutation("label smoothing ignored", "bigjax/core/losses.py",
             "targets = (1.0 - label_smoothing) * targets + label_smoothing / logits.shape[-1]",
             "targets = targets",
             ("tests/core/test_losses.py",)),
    Mutation("pmap keeps each device's own BatchNorm statistics", "bigjax/core/steps.py",
             "      new_model_state = jax.lax.pmean(new_model_state, axis_name)\n", "",
             ("tests/sharding/test_parallel.py::"
              "test_pmap_averages_batch_norm_statistics_over_devices",)),
    Mutation("a resumed run forgets the steps not yet logged", "bigjax/training/loop.py",
             "    if unlogged:  # the steps since", "    if False:  # the steps since",
             ("tests/training/test_checkpoint_integrity.py::"
              "test_a_run_resumed_mid_epoch_logs_the_rows_of_a_run_never_stopped",)),
    Mutation("a run resumed at its end logs its final rows again", "bigjax/train.py",
             "    if not recorded:  # (a run resumed", "    if True:  # (a run resumed",
             ("tests/training/test_checkpoint_integrity.py::"
              "test_running_a_finished_run_again_repeats_no_row",)),
)


def _copy_tree(destination: str) -> None:
  ignore = shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", ".pytest_cache")
  shutil.copytree(ROOT, destination, ignore=ignore, dirs_exist_ok=True)


def _apply(tree: str, mutation: Mutation) -> None:
  path = os.path.join(tree, mutation.path)
  with open(path) as f:
    text = f.read()
  if text.count(mutation.old) != 1:
    raise SystemExit(f"mutation {mutation.name!r}: its text occurs {text.count(mutation.old)} "
                     f"times in {mutation.path} (expected once): update bench/mutations.py")
  with open(path, "w") as f:
    f.write(text.replace(mutation.old, mutation.new))


def run_one(mutation: Mutation) -> tuple[bool, float, str]:
  """(caught, seconds, the first failing test): the mutation's tests run against a mutated copy of the tree."""
  with tempfile.TemporaryDirectory(prefix="bigjax_mutant_") as tree:
    _copy_tree(tree)
    _apply(tree, mutation)
    # The copy comes first on the path, ahead of an editable install of this checkout.
    env = dict(os.environ, PYTHONPATH=tree, JAX_PLATFORMS="cpu")
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p",
                             "no:cacheprovider", *mutation.tests], cwd=tree, env=env,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if result.returncode not in (0, 1):  # 1: tests failed; others: could not run
      sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])
      raise SystemExit(f"mutation {mutation.name!r}: pytest exited {result.returncode}")
    failed = [line.split()[1] for line in result.stdout.splitlines()
              if line.startswith("FAILED ")]
    return result.returncode == 1, seconds, (failed or ["-"])[0]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default="", help="run the mutations whose name contains this")
  args = parser.parse_args()
  chosen = [m for m in MUTATIONS if args.only in m.name]
  survived = 0
  for mutation in chosen:
    caught, seconds, first_failure = run_one(mutation)
    survived += not caught
    print(f"{'caught  ' if caught else 'SURVIVED'} {seconds:6.1f} s  {mutation.name}: "
          f"{first_failure if caught else ', '.join(mutation.tests)}", flush=True)
  print(f"{len(chosen) - survived} caught, {survived} survived")
  return 1 if survived else 0


if __name__ == "__main__":
  sys.exit(main())
