"""Data-parallel, pmap and FSDP training on 8 fake CPU devices (in a subprocess: the device
count is fixed when JAX starts), mixed precision, and the mesh's bad-input errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bigjax.sharding import parallel, precision
from bigjax.registry import ConfigError

from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
  root = tmp_path_factory.mktemp("multidevice")
  proc = subprocess.run([sys.executable, os.path.join("tests", "helpers", "multidevice.py"),
                         str(root)], cwd=REPO_ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_sharded_and_pmap_training_equal_single_device_training(eight_devices):
  r = eight_devices
  assert r["devices"] == 8 and r["jit8_batch_devices"] == 8
  assert r["one_steps"] == r["jit8_steps"] == r["pmap8_steps"] == 20
  # 20 Adam steps move the params by ~2e-2; the three layouts agree to float32 rounding.
  assert r["first_kernel_change"] > 1e-2
  assert r["jit8_vs_one"] < 1e-5 and r["pmap8_vs_one"] < 1e-5
  assert r["jit8_test_loss"] == pytest.approx(r["one_test_loss"], rel=1e-5)
  assert r["pmap8_test_loss"] == pytest.approx(r["jit8_test_loss"], rel=1e-6)


@pytest.mark.slow
def test_gradient_accumulation_under_pmap_equals_it_on_one_device(eight_devices):
  r = eight_devices
  assert r["accum_pmap8_vs_one"] < 1e-5  # each device: 2 micro-batches of its 4 examples


@pytest.mark.slow
def test_pmap_averages_batch_norm_statistics_over_devices(eight_devices):
  r = eight_devices
  assert r["bn_devices_agree"] == 0.0  # every device holds the same running statistics
  assert r["bn_stats_spread_of_shares"] > 0.1  # the shares' own statistics differ...
  assert r["bn_stats_vs_mean_of_shares"] < 1e-5  # ...and pmap keeps their mean
  assert r["bn_params_vs_mean_of_shares"] < 1e-5  # the update is the global batch's


@pytest.mark.slow
def test_fsdp_really_shards_and_equals_replicated(eight_devices):
  r = eight_devices
  specs = r["fsdp_specs"]  # mesh data=2 x fsdp=4, arrays of >= 1000 elements split
  assert specs["['dense_0']['kernel']"] == "P(None, 'fsdp')"  # 64 x 128: the 128 axis
  assert specs["['head']['kernel']"] == "P('fsdp', None)"     # 128 x 10: 10 % 4 != 0
  assert specs["['dense_0']['bias']"] == "P()"                # 128 < 1000 elements
  assert r["fsdp_vs_one"] < 1e-5


@pytest.mark.slow
def test_a_language_model_trains_fsdp_sharded_as_on_one_device(eight_devices):
  assert eight_devices["lm_fsdp_split"] >= 4  # embedding and block kernels are split
  assert eight_devices["lm_fsdp_vs_one"] < 1e-5


@pytest.mark.slow
def test_checkpoints_move_between_device_counts(eight_devices):
  assert eight_devices["resume_8to1"] == [20, 40]
  assert eight_devices["resume_1to8"] == [20, 40]
  # ...and end where 40 steps without the move end (float32 rounding of the reductions).
  assert eight_devices["resume_8to1_vs_straight"] < 1e-6
  assert eight_devices["resume_1to8_vs_straight"] < 1e-6


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params(eight_devices):
  r = eight_devices
  assert r["bf16_param_dtypes"] == ["float32"]
  assert np.isfinite(r["bf16_test_loss"])
  assert 0 < r["bf16_vs_one"] < 0.1  # bfloat16 rounding, not a different run
  # The same training, not merely a finite one: each layer's kernel moves as far as in
  # float32 (20 Adam steps: about 0.02), and the test loss is float32's to 1e-2 (from
  # about 2.3 at init to 1.99 here; a model that saw no input stays near 2.3).
  for name, moved in r["one_kernel_moves"].items():
    assert moved > 1e-2
    assert r["bf16_kernel_moves"][name] == pytest.approx(moved, rel=0.1), name
  assert r["bf16_test_loss"] == pytest.approx(r["one_test_loss"], abs=1e-2)


def test_mesh_and_batch_errors_name_the_numbers():
  n = jax.device_count()
  with pytest.raises(ConfigError, match=f"num_devices={n + 3}, but JAX sees {n}"):
    parallel.build_mesh(dict(num_devices=n + 3))
  with pytest.raises(ConfigError, match=r"multiplies to 2 devices, but 1 are in use"):
    parallel.build_mesh(dict(num_devices=1, mesh=dict(data=2, fsdp=1)))
  with pytest.raises(ConfigError, match="unknown axes"):
    parallel.build_mesh(dict(mesh=dict(model=2)))
  mesh = parallel.build_mesh(dict(num_devices=1))
  parallel.check_batch_size(30, mesh)
  fake = type("Mesh", (), {"size": 8})()
  with pytest.raises(ConfigError, match=r"batch_size=30 does not divide over the 8 devices.*"
                                        r"multiple of 8 \(e.g. 24, 32\)"):
    parallel.check_batch_size(30, fake)
  with pytest.raises(ConfigError, match='mode="shard"'):
    parallel.check_mode("shard")
  other = "tpu" if jax.default_backend() != "tpu" else "gpu"
  with pytest.raises(ConfigError, match=f"platform='{other}', but JAX is running on "
                                        f"{jax.default_backend().upper()}"):
    parallel.build_mesh(dict(platform=other))
  parallel.build_mesh(dict(platform=jax.default_backend()))


def test_fsdp_leaf_rule():
  assert parallel.leaf_spec("k", (64, 128), 4, 1000, "") == jax.sharding.PartitionSpec(
      None, "fsdp")
  assert parallel.leaf_spec("k", (7, 9), 4, 10, "") == jax.sharding.PartitionSpec()
  assert parallel.leaf_spec("['b']['kernel']", (8,), 4, 10 ** 9, "kernel") == \
      jax.sharding.PartitionSpec("fsdp")
  assert parallel.leaf_spec("k", (64, 128), 1, 0, "") == jax.sharding.PartitionSpec()


def test_precision_names():
  import jax.numpy as jnp
  assert precision.resolve({"compute_dtype": "bfloat16"}) == (jnp.bfloat16, jnp.float32)
  expected = jnp.bfloat16 if jax.default_backend() == "tpu" else jnp.float32
  assert precision.resolve({})[0] == expected
  with pytest.raises(ConfigError, match='compute_dtype="bf16"'):
    precision.resolve({"compute_dtype": "bf16"})


@pytest.mark.slow
def test_colab_notebook_cells_run_on_the_cpu(tmp_path):
  notebook = json.load(open(os.path.join(REPO_ROOT, "notebooks", "colab_tpu.ipynb")))
  cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
  assert len(cells) == 4
  # The install cell: a clone of the repository, installed by path (pip resolves it in a dry
  # run here, so this test's environment is left as it is).
  clone = tmp_path / "clone"
  env = dict(os.environ, BIGJAX_REPO=REPO_ROOT, BIGJAX_DIR=str(clone),
             BIGJAX_PIP_ARGS="--dry-run --no-deps")
  proc = subprocess.run([sys.executable, "-c", cells[0]], cwd=tmp_path, capture_output=True,
                        text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (clone / "configs" / "mnist.py").exists() and (clone / "pyproject.toml").exists()
  # Every cell, on the repository itself.
  script = tmp_path / "notebook.py"
  script.write_text("\n\n".join(cells))
  env = dict(env, BIGJAX_DIR=REPO_ROOT, BIGJAX_ALLOW_CPU="1", MPLBACKEND="Agg",
             BIGJAX_CONFIG="digits", BIGJAX_WORKDIR=str(tmp_path / "run"))
  proc = subprocess.run([sys.executable, str(script)], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "test accuracy 0.9" in proc.stdout and "CPU" in proc.stdout
  assert (tmp_path / "run" / "notebook_loss.png").stat().st_size > 1000
  # Without the test switch, the TPU check fails loudly on a CPU.
  env.pop("BIGJAX_ALLOW_CPU")
  check = "\n\n".join(cells[1:2]).replace("import jax", "import jax, os")
  proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                        timeout=120, env=env)
  assert proc.returncode != 0 and "not a TPU. Runtime > Change runtime type > TPU" in proc.stderr
  # Without a repository to clone, the install cell says what to set.
  env = dict(os.environ, BIGJAX_DIR=str(tmp_path / "absent"), BIGJAX_REPO="")
  proc = subprocess.run([sys.executable, "-c", cells[0]], capture_output=True, text=True,
                        timeout=120, env=env)
  assert proc.returncode != 0 and "Set BIGJAX_REPO" in proc.stderr


def _free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["device", "host", "records"])
def test_two_host_processes_train_as_one(placement, tmp_path, eight_devices):
  """JAX's multi-host runtime on one machine: 2 processes x 4 CPU devices, each reading its
  own share of every batch (host placement; records: streamed from array_record files by a
  grain worker), equal to one device's training; process 0 draws the pictures from every
  process's outputs."""
  env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"localhost:{_free_port()}",
             JAX_NUM_PROCESSES="2")
  script = os.path.join("tests", "helpers", "multihost.py")
  if placement == "records":
    from tests.helpers import multihost
    multihost.write_records(str(tmp_path / "run_records"))
  procs = [subprocess.Popen([sys.executable, script, str(tmp_path / "run"), placement],
                            cwd=REPO_ROOT, env=dict(env, JAX_PROCESS_ID=str(i)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  line = next(l for l in outputs[0][0].splitlines() if l.startswith("RESULT "))
  result = json.loads(line[len("RESULT "):])
  assert result["processes"] == 2 and result["devices"] == 8 and result["steps"] == 20
  assert result["test_loss"] == pytest.approx(eight_devices["one_test_loss"], rel=1e-5)
  assert not any(l.startswith("RESULT ") for l in outputs[1][0].splitlines())
  assert (tmp_path / "run" / "results.json").exists()  # written once, by process 0
  # The pictures gather both processes' outputs in the split's order (a wrong order would
  # not reproduce the evaluation's accuracy).
  assert result["pictured_accuracy"] == result["test_accuracy"]
  assert (tmp_path / "run" / "predictions_test.png").exists()
  # Resumed by both processes: 20 more steps, as one device's 40 straight steps.
  assert result["resumed_from_step"] == 20 and result["resumed_steps"] == 40
  assert result["resumed_test_loss"] == pytest.approx(
      eight_devices["resume_8to1_straight_test_loss"], rel=1e-5)


def test_fsdp_regex_splits_matching_params_whatever_their_size():
  from jax.sharding import PartitionSpec as P
  huge = 2 ** 40  # fsdp_min_size no array reaches: only the regex decides
  spec = lambda path, shape, regex: parallel.leaf_spec(path, shape, 4, huge, regex)
  assert spec("['dense_0']['kernel']", (64, 128), "kernel") == P(None, "fsdp")  # largest dim
  assert spec("['head']['kernel']", (128, 10), "kernel") == P("fsdp", None)  # 10 % 4 != 0
  assert spec("['dense_0']['bias']", (128,), "kernel") == P()  # not matched
  assert spec("['dense_0']['kernel']", (64, 128), "") == P()  # no regex: size only
  assert spec("['dense_0']['kernel']", (6, 10), "kernel") == P()  # no dimension divides by 4
  assert parallel.leaf_spec("['dense_0']['bias']", (128,), 1, 0, ".") == P()  # fsdp=1: replicated


@pytest.mark.slow
def test_contrastive_losses_gather_negatives_from_every_device(eight_devices):
  r = eight_devices
  for name in ("nt_xent", "vicreg"):
    # pmap over 8 devices with gathered rows = one device holding the whole batch.
    assert r[f"{name}_step_moves"] > 1e-3
    assert r[f"{name}_pmap_vs_one_params"] < 1e-5, name
    assert r[f"{name}_pmap_vs_one_loss"] < 1e-5, name
    assert not r[f"{name}_has_accuracy"]  # embeddings, not class scores
  assert r["simclr_jit8_vs_one"] < 1e-5  # sharded under jit: the global batch, as on one
