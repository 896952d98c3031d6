"""One of two host processes (4 fake CPU devices each) training together through JAX's
distributed runtime; run by tests/test_parallel.py. Process 0 prints its results."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))

import jax  # noqa: E402

from bigjax import parallel, train  # noqa: E402
from tests.helpers.multidevice import config  # noqa: E402


def main(root, placement):
  c = config()
  with c.unlocked():
    c.data.placement = placement
  parallel.maybe_initialize_distributed(c.parallel)
  results = train.run(c, root)
  if jax.process_index() == 0:
    print("RESULT " + json.dumps({"processes": jax.process_count(),
                                  "devices": jax.device_count(),
                                  "test_loss": results["test_loss"],
                                  "steps": results["steps"]}))


if __name__ == "__main__":
  # (Read when JAX first touches the devices, which is after this.)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=4")
  main(sys.argv[1], sys.argv[2])
