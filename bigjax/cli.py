"""Turns run.py's flags into a call of the driver."""

from __future__ import annotations

import ast
import logging as py_logging
import os
import re
import sys
from typing import Sequence

from absl import flags
from absl import logging

from bigjax import train


def default_workdir(config_path: str) -> str:
  """runs/<config file stem>[_<variant>]: 'configs/mnist.py:cnn' -> 'runs/mnist_cnn'."""
  path, _, arg = config_path.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  suffix = "_" + arg.replace(",", "_") if arg else ""
  return os.path.join("runs", name + suffix)


class _PlainFormatter(py_logging.Formatter):
  """'HH:MM:SS message'; warnings and errors say so, so they stand out from progress."""

  def __init__(self):
    super().__init__("%(asctime)s %(message)s", "%H:%M:%S")

  def format(self, record: py_logging.LogRecord) -> str:
    text = super().format(record)
    if record.levelno >= py_logging.WARNING:
      time_part, _, message = text.partition(" ")
      text = f"{time_part} {record.levelname}: {message}"
    return text


def _quiet_logs() -> None:
  """bigjax's own lines at INFO, plainly formatted; libraries' (Orbax's are many) at WARNING."""
  logging.set_verbosity(logging.WARNING)
  handler = logging.get_absl_handler()
  handler.setFormatter(_PlainFormatter())
  py_logging.getLogger("bigjax").setLevel(py_logging.INFO)


PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def raised_by_bigjax(error: BaseException) -> bool:
  """Whether bigjax itself raised `error` (its innermost frame is in the package): those are
  checks on the user's config, data or checkpoints, whose message says what to fix."""
  tb = error.__traceback__
  if tb is None:
    return False
  while tb.tb_next is not None:
    tb = tb.tb_next
  return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(PACKAGE_DIR + os.sep)


def _fail(message: str) -> None:
  print(f"bigjax: error: {message}", file=sys.stderr)
  sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a config file that cannot load, or an override that names no
  key (a typo), ending the run on one line, `bigjax: error: ... Did you mean "..."?`,
  instead of a chained traceback."""
  if not os.environ.get("BIGJAX_TRACEBACK"):
    problem = config_file_problem(argv)
    if problem:
      _fail(problem)
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    if os.environ.get("BIGJAX_TRACEBACK"):
      raise
    _fail(override_error(argv, e))
  except flags.Error as e:  # a value of the wrong type, an unknown flag: absl's own line
    text = str(e)
    if "Error whilst parsing config file" in text:  # get_config raised: its last line
      lines = [line for line in text.splitlines() if line.strip()]
      _fail(f"{lines[0].split(': Error whilst')[0].replace('flag ', '')}: {lines[-1]}")
    _fail(f"{text}\nPass --helpfull to see every flag.")


def config_file_problem(argv: Sequence[str]) -> str | None:
  """What stops --config's file from loading (missing, a syntax error, no get_config), as
  one line; None when it can load (or none is given)."""
  spec = None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      spec = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      spec = argv[i + 1]
  if spec is None:
    return None
  path = spec.split(":", 1)[0]
  if not os.path.isfile(path):
    return (f"--config={spec}: {path} does not exist. Pass a config file, e.g. "
            "--config=configs/mnist.py.")
  try:
    with open(path) as f:
      tree = ast.parse(f.read(), path)
  except SyntaxError as e:
    return f"--config={spec}: {path}, line {e.lineno}: {e.msg}."
  except (OSError, UnicodeDecodeError) as e:
    return f"--config={spec}: cannot read {path} ({e})."
  if not any(isinstance(node, ast.FunctionDef) and node.name == "get_config"
             for node in tree.body):
    return (f"--config={spec}: {path} defines no get_config() (a config file returns its "
            "ConfigDict from get_config(arg=None); see configs/mnist.py).")
  return None


def override_error(argv: Sequence[str], error: BaseException) -> str:
  """One line for an override of a key the config does not have: which argument, which
  key, and ml_collections' did-you-mean."""
  inner = error  # AttributeError(KeyError("'key'\nDid you mean ...")) from ml_collections
  while isinstance(inner, BaseException) and inner.args:
    inner = inner.args[0]
  text = str(inner).strip("'\"")
  key, _, suggestion = text.partition("\n")
  key = key.strip("'\"")
  overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
  flag = next((o for o in overrides if o.split(".")[-1] == key or f".{key}." in o + "."),
              overrides[0] if overrides else "--config")
  match = re.search(r'Did you mean "([^"]+)"', suggestion)
  suggestion = f'Did you mean "{match.group(1)}"?' if match else ""
  return (f'{flag}: the config has no key "{key}". {suggestion}'.strip()
          + " Each --config.KEY must name an existing key (see the config file).")


def main(flag_values: flags.FlagValues, files: Sequence[str] = ()) -> None:
  """run.py's body. bigjax's own input errors end the run with their message alone (exit
  status 1); anything else keeps its traceback. BIGJAX_TRACEBACK=1 shows every traceback."""
  try:
    _main(flag_values, files)
  except KeyboardInterrupt:  # a second Ctrl-C while saving, or one outside training
    if os.environ.get("BIGJAX_TRACEBACK"):
      raise
    print("bigjax: interrupted; nothing was saved since the last checkpoint, which resumes "
          "the run.", file=sys.stderr)
    sys.exit(128 + 2)
  except flags.ValidationError as e:  # a flag combination run.py cannot use
    if os.environ.get("BIGJAX_TRACEBACK"):
      raise
    _fail(str(e))
  except (ValueError, FileNotFoundError, PermissionError, RuntimeError, FloatingPointError) as e:
    if not raised_by_bigjax(e) or os.environ.get("BIGJAX_TRACEBACK"):
      raise
    print(f"bigjax: error: {e}\n(BIGJAX_TRACEBACK=1 shows where it was raised.)",
          file=sys.stderr)
    sys.exit(1)


def _main(flag_values: flags.FlagValues, files: Sequence[str]) -> None:
  _quiet_logs()
  from bigjax.training import compilation
  cache = compilation.enable_persistent_cache(flag_values.compilation_cache)
  if cache:
    py_logging.getLogger("bigjax").info("compilation cache: %s", cache)
  config = flag_values.config
  if config is not None:  # before anything touches the devices
    from bigjax.sharding import parallel
    parallel.maybe_initialize_distributed(config.get("parallel") or {})
    import jax
    if jax.process_index() != 0:  # one log for the whole job: process 0's
      py_logging.getLogger("bigjax").setLevel(py_logging.WARNING)
  config_path = flag_values["config"].config_filename if config is not None else None
  workdir = flag_values.workdir
  if workdir is None:
    if config_path is None:
      raise flags.ValidationError("Pass --config=configs/<name>.py (or --workdir for eval).")
    workdir = default_workdir(config_path)
  if flag_values.mode == "train":
    if config is None:
      raise flags.ValidationError("--mode=train needs --config=configs/<name>.py.")
    try:
      train.run(config, workdir)
    except train.Interrupted as e:
      logging.warning("%s", e)
      sys.exit(128 + e.signum)  # the shell's convention for "killed by this signal"
  elif flag_values.mode == "summary":
    if config is None:
      raise flags.ValidationError("--mode=summary needs --config=configs/<name>.py.")
    from bigjax.outputs import summary
    text = summary.write(summary.report_for_run(config, workdir), workdir, title=config_path)
    print(text)
    py_logging.getLogger("bigjax").info("summary written to %s/summary.md and summary.json",
                                        workdir)
  else:
    from bigjax.inference import evaluate as inference
    step = flag_values.step if flag_values.step in ("latest", "best") else _step(flag_values.step)
    if config is None:
      config = train.load_run_config(workdir)
      if not flag_values.trust_plugins:
        from bigjax import registry
        registry.refuse_plugins_from(os.path.join(workdir, "config.json"), config)
    else:  # as training built it: an hf: init_from names the architecture
      from bigjax.finetuning import finetune
      config = finetune.with_checkpoint_architecture(config)
    if flag_values.mode == "sample":
      from bigjax.inference import sample
      prompt = flag_values.prompt
      if prompt is None:
        prompt = (config.get("sample") or {}).get("prompt", "")
      sample.sample(config, workdir, prompt, step, flag_values.max_new_tokens,
                    flag_values.temperature, flag_values.top_k, flag_values.top_p,
                    flag_values.num_samples)
    elif flag_values.mode == "export" and flag_values.export_format == "hf":
      from bigjax.inference import export
      export.export_hf(config, workdir, step, flag_values.export_dir)
    elif flag_values.mode == "export":
      from bigjax.inference import export
      export.export(config, workdir, step, flag_values.export_dir, flag_values.onnx,
                    flag_values.quantize, flag_values.calibration_examples)
    elif flag_values.mode == "quantize" or (flag_values.mode == "eval" and flag_values.quantize):
      from bigjax.compression import quantization
      if flag_values.quantize is None:
        raise flags.ValidationError("--mode=quantize needs --quantize=weights|dynamic|static.")
      quantization.evaluate(config, workdir, flag_values.quantize, step,
                            flag_values.calibration_examples)
    elif flag_values.mode == "eval":
      inference.evaluate(config, workdir, flag_values.split, step)
    else:
      inference.predict(config, workdir, flag_values.split, files, step)


def _step(text: str) -> int:
  try:
    return int(text)
  except ValueError:
    raise flags.ValidationError(f"--step={text}: use latest, best, or a step number.") from None
