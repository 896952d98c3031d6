"""One of two host processes (4 fake CPU devices each) training together through JAX's
distributed runtime; run by tests/sharding/test_parallel.py. Process 0 prints its results."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))

import jax  # noqa: E402

from bigjax import train
from bigjax.outputs import artifacts
from bigjax.sharding import parallel
from tests.helpers.multidevice import config  # noqa: E402


def write_records(folder) -> None:
  """digits as a records folder (written by the test, before the processes start)."""
  from bigjax.data import records, sources
  raw = sources.load_raw(config().data)
  records.write(folder, {"train": (raw.train_inputs, raw.train_targets),
                         "test": (raw.test_inputs, raw.test_targets)},
                raw.class_names, pixel_max=raw.pixel_max)


def main(root, placement):
  c = config()
  with c.unlocked():
    if placement == "records":  # streamed from array_record files by a worker process
      c.data.update(source="array_record", path=f"{root}_records", worker_count=1)
      placement = "host"
    c.data.placement = placement
    c.report.plots = True  # the pictures: drawn by process 0 from every process's outputs
  parallel.maybe_initialize_distributed(c.parallel)
  pictured = {}  # the pictures' view of the test split: every process's outputs, in order
  draw = artifacts.prediction_pictures

  def recording(workdir, split, images, labels, probabilities, *args):
    pictured["accuracy"] = float((probabilities.argmax(-1) == labels).mean())
    return draw(workdir, split, images, labels, probabilities, *args)

  artifacts.prediction_pictures = recording
  results = train.run(c, root)
  # Resumed by both processes from the checkpoint they saved together, 20 steps further.
  with c.unlocked():
    c.train.num_steps = 40
    c.report.plots = False
  resumed = train.run(c, root)
  if jax.process_index() == 0:
    print("RESULT " + json.dumps({"processes": jax.process_count(),
                                  "devices": jax.device_count(),
                                  "test_loss": results["test_loss"],
                                  "test_accuracy": results["test_accuracy"],
                                  "pictured_accuracy": pictured.get("accuracy"),
                                  "steps": results["steps"],
                                  "resumed_from_step": resumed["resumed_from_step"],
                                  "resumed_steps": resumed["steps"],
                                  "resumed_test_loss": resumed["test_loss"]}))


if __name__ == "__main__":
  # (Read when JAX first touches the devices, which is after this.)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=4")
  main(sys.argv[1], sys.argv[2])
