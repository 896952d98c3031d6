"""The language-model path: GPT causality, the KV cache, byte tokens, sampling, a text
source, training end to end, and its bad input."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigjax import train
from bigjax.core import losses
from bigjax.finetuning import lora
from bigjax.training.programs import Programs
from bigjax.data import sources, text
from bigjax.models import build_model, init_variables
from bigjax.registry import ConfigError
from bigjax.inference.sample import filter_logits, generate
from configs import lm_tiny

MODEL = dict(name="gpt", vocab_size=256, context_length=24, hidden_size=32, depth=2,
             num_heads=4)


def _model(**overrides):
  model = build_model(dict(MODEL, **overrides))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 24)), jnp.int32)
  return model, init_variables(model, jax.random.PRNGKey(0), tokens)["params"], tokens


@pytest.mark.slow
@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_the_loss_at_t_has_no_gradient_from_tokens_after_t(positions):
  model, params, tokens = _model(positions=positions)
  t = 9

  def loss_at_t(one_hot):
    # The token embedding as a one-hot matmul, so a gradient reaches every input token.
    table = params["token_embedding"]["embedding"]
    out = nn_apply_with_embedding(model, params, tokens, lambda *_: one_hot @ table)
    return optax.softmax_cross_entropy_with_integer_labels(out[:, t], tokens[:, t + 1]).sum()

  one_hot = jax.nn.one_hot(tokens, 256)
  grads = jax.grad(loss_at_t)(one_hot)
  assert float(jnp.abs(grads[:, :t + 1]).sum()) > 0
  np.testing.assert_array_equal(grads[:, t + 1:], 0.0)


def nn_apply_with_embedding(model, params, tokens, embed):
  """Applies the model with its token embedding replaced by `embed` (an interceptor)."""
  import flax.linen as nn

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Embed) and context.method_name == "__call__":
      return embed(*args, **kwargs)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    return model.apply({"params": params}, tokens)


@pytest.mark.slow
@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_kv_cache_decoding_gives_the_full_forward_pass_logits(positions):
  model, params, tokens = _model(positions=positions)
  full = model.apply({"params": params}, tokens)
  cache = jax.tree.map(jnp.zeros_like,
                       model.init(jax.random.PRNGKey(0), tokens[:, :1], decode=True)["cache"])
  logits, state = model.apply({"params": params, "cache": cache}, tokens[:, :10], decode=True,
                              mutable=["cache"])
  pieces = [logits]
  for i in range(10, tokens.shape[1]):
    logits, state = model.apply({"params": params, "cache": state["cache"]},
                                tokens[:, i:i + 1], decode=True, mutable=["cache"])
    pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=2e-5, rtol=2e-5)


def test_byte_tokens_round_trip_any_utf8():
  rng = np.random.default_rng(0)
  samples = ["", "plain ASCII", "naïve café – 日本語 – 🙂🚀", "\x00\n\t"]
  samples += ["".join(chr(c) for c in rng.integers(1, 0x10FFFF, 50) if not 0xD800 <= c <= 0xDFFF)
              for _ in range(20)]
  for s in samples:
    tokens = text.encode(s)
    assert tokens.min(initial=0) >= 0 and tokens.max(initial=0) < 256
    assert text.decode(tokens) == s


def test_a_tiny_model_overfits_a_fixed_batch():
  model, params, tokens = _model()
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss(p):
      logits = model.apply({"params": p}, tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, value

  first = None
  for _ in range(300):
    params, opt_state, value = step(params, opt_state)
    first = first if first is not None else float(value)
  assert first > 5.0 and float(value) < 0.05, (first, float(value))


def test_lora_on_attention_and_mlp_kernels_merged_equals_unmerged():
  model, params, tokens = _model()
  adapted = lora.add_adapters(params, 4, "(qkv|out|mlp_in|mlp_out)/kernel",
                              jax.random.PRNGKey(1))
  assert len(lora.flatten(adapted[lora.ADAPTERS])) == 2 * 4 * 2  # 4 kernels x 2 blocks, a and b
  adapted[lora.ADAPTERS] = jax.tree.map(lambda x: x + 0.01, adapted[lora.ADAPTERS])
  wrapped = lora.LoRAModel(model, 2.0)
  np.testing.assert_allclose(wrapped.apply({"params": adapted}, tokens),
                             model.apply({"params": lora.merge(adapted, 2.0)}, tokens),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_sampling_at_temperature_0_is_deterministic_and_filters_work():
  model, params, tokens = _model()
  a = generate(model, params, tokens[:, :5], 10, jax.random.PRNGKey(0), temperature=0.0)
  b = generate(model, params, tokens[:, :5], 10, jax.random.PRNGKey(7), temperature=0.0)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (2, 15) and (np.asarray(a[:, :5]) == np.asarray(tokens[:, :5])).all()
  c = generate(model, params, tokens[:, :5], 10, jax.random.PRNGKey(0), temperature=1.0)
  d = generate(model, params, tokens[:, :5], 10, jax.random.PRNGKey(1), temperature=1.0)
  assert not np.array_equal(c, d)
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  assert np.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
  assert np.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
  assert np.isinf(filter_logits(logits, top_p=0.85)).tolist() == [[False, False, False, True]]
  with pytest.raises(ConfigError, match="prompt is empty"):
    generate(model, params, tokens[:, :0], 10, jax.random.PRNGKey(0))


@pytest.mark.slow
def test_sampling_past_the_context_slides_a_window_over_the_last_tokens():
  """Greedy decoding across the end of the 24-token context, and from a prompt longer than
  it, equals predicting each token from the last 24 tokens with the plain forward pass."""
  model, params, tokens = _model()
  long_prompt = jnp.concatenate([tokens, tokens[:, :6]], axis=1)  # 30 tokens
  for prompt in (tokens[:, :20], long_prompt):
    out = np.asarray(generate(model, params, prompt, 10, jax.random.PRNGKey(0), 0.0))
    expected = np.asarray(prompt)
    for _ in range(10):
      logits = model.apply({"params": params}, jnp.asarray(expected[:, -24:]))[:, -1]
      expected = np.concatenate([expected, np.asarray(logits.argmax(-1))[:, None]], axis=1)
    np.testing.assert_array_equal(out, expected)
  sampled = generate(model, params, tokens[:, :5], 25, jax.random.PRNGKey(3), 1.0)
  assert sampled.shape == (2, 30)
  np.testing.assert_array_equal(np.asarray(sampled[:, :5]), np.asarray(tokens[:, :5]))


def _corpus(tmp_path, repeats=200):
  folder = tmp_path / "corpus"
  os.makedirs(folder)
  (folder / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * repeats)
  (folder / "b").write_text("pack my box with five dozen liquor jugs! " * repeats)
  (folder / "b.dat").write_bytes(b"\xff\xfe binary index, skipped")
  return folder


def test_text_source_splits_by_position_into_windows(tmp_path):
  config = lm_tiny.get_config("small").data
  with config.unlocked():
    config.path = str(_corpus(tmp_path))
  raw = sources.load_raw(config)
  t = config.seq_len
  assert raw.train_inputs.shape[1:] == (t,) and raw.pixel_max == 0.0
  np.testing.assert_array_equal(raw.train_inputs[:, 1:], raw.train_targets[:, :-1])
  np.testing.assert_array_equal(raw.train_inputs[1:, 0], raw.train_targets[:-1, -1])
  assert text.decode(raw.train_inputs[0]).startswith("the quick brown fox")
  assert "liquor jugs" in text.decode(raw.test_inputs[-1])  # the end of the corpus


@pytest.mark.slow
def test_lm_trains_evaluates_checkpoints_and_samples(tmp_path):
  from bigjax.inference import sample
  config = lm_tiny.get_config("small")
  with config.unlocked():
    config.data.path = str(_corpus(tmp_path))
    config.train.num_steps = 60
    config.report.plots = config.report.html = False
  results = train.run(config, str(tmp_path / "run"))
  test = results["metrics"]["test"]
  assert test["loss"] < 3.5  # from ln(256) = 5.5 at the start; measured 2.82
  assert test["perplexity"] == pytest.approx(np.exp(test["loss"]))
  assert test["bits_per_byte"] == pytest.approx(test["loss"] / np.log(2))
  texts = sample.sample(config, str(tmp_path / "run"), "the qu", max_new_tokens=12,
                        temperature=0.0)
  assert texts[0].startswith("the qu") and len(texts[0].encode()) == 6 + 12
  assert (tmp_path / "run" / "samples.txt").read_text().count("---") == 1
  # The same through run.py, from the workdir's own config.json: greedy decoding repeats.
  import subprocess
  import sys
  from conftest import REPO_ROOT
  proc = subprocess.run([sys.executable, "run.py", "--mode=sample",
                         f"--workdir={tmp_path / 'run'}", "--prompt=the qu",
                         "--max_new_tokens=12", "--temperature=0", "--compilation_cache="],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert texts[0] in proc.stdout + proc.stderr
  # Out as a Hugging Face checkpoint (GPT-2's architecture), and back in: the same params.
  from bigjax.finetuning import finetune
  from bigjax.inference import export
  from bigjax.models import hf
  from bigjax.training import checkpoint
  folder = export.export_hf(config, str(tmp_path / "run"))
  hf_config = hf.read_config(hf.PREFIX + folder)
  assert hf_config["architectures"] == ["GPT2LMHeadModel"]
  back = hf.convert(hf.read_tensors(hf.PREFIX + folder), hf_config)
  _, trained = checkpoint.latest_params(str(tmp_path / "run"))
  assert back.keys() == finetune.flatten(trained).keys()
  for key, value in finetune.flatten(trained).items():
    np.testing.assert_array_equal(back[key], value)


@pytest.mark.slow
def test_tfds_text_dataset_by_name_trains_on_mock_data(tmp_path):
  import tensorflow_datasets as tfds
  config = lm_tiny.get_config("small,tiny_shakespeare")
  assert (config.data.source, config.data.name) == ("tfds_text", "tiny_shakespeare")
  with config.unlocked():
    config.train.num_steps = 5
    config.train.batch_size = 8
    config.report.plots = config.report.html = False
  with tfds.testing.mock_data(num_examples=400):  # short random strings
    raw = sources.load_raw(config.data)
    expected = b"".join(
        (ex["text"].encode() if isinstance(ex["text"], str) else ex["text"]) + b"\n"
        for ex in tfds.builder("tiny_shakespeare").as_data_source(split="train"))
    results = train.run(config, str(tmp_path))
  stream = raw.train_inputs.ravel()  # consecutive windows of the stream
  assert bytes(stream.astype(np.uint8)) == expected[:len(stream)]  # the text, in order
  assert raw.validation_inputs is not None and results["steps"] == 5
  assert np.isfinite(results["metrics"]["test"]["loss"])
  with pytest.raises(ConfigError, match='TFDS "mnist" has no single text feature'):
    with tfds.testing.mock_data(num_examples=4):
      sources.load_raw(dict(config.data, name="mnist"))
  from bigjax.data.tfds_source import DatasetUnavailableError
  offline = dict(config.data, download=False, data_dir=str(tmp_path / "tfds"))
  with pytest.raises(DatasetUnavailableError, match="(?s)not prepared.*--config.data.source=text"):
    sources.load_raw(offline)


def test_lm_bad_input(tmp_path):
  from bigjax.inference import sample
  bad = tmp_path / "latin1.txt"
  bad.write_bytes("café".encode("latin-1"))
  with pytest.raises(ConfigError, match=r"latin1.txt is not UTF-8 text: byte 3 \(0xe9\)"):
    text.read_utf8([str(bad)])
  config = lm_tiny.get_config("small")
  with config.unlocked():
    config.data.path = str(_corpus(tmp_path))
    config.data.seq_len = 64  # the small model's context is 32
  with pytest.raises(ValueError, match="64 tokens is longer than context_length=32"):
    Programs(config)
  with config.unlocked():
    config.data.seq_len = 32
  with pytest.raises(FileNotFoundError, match="No checkpoint in .*train this workdir first"):
    sample.sample(config, str(tmp_path / "empty"), "hi")


def test_flops_per_token_counts_the_model_matmul_weights():
  from bigjax.outputs import mfu
  from bigjax.finetuning.finetune import flatten
  _, params, _ = _model()
  kernels = sum(x.size for path, x in flatten(params).items() if path.endswith("kernel"))
  head = params["token_embedding"]["embedding"].size  # the tied output projection
  assert mfu.gpt_flops_per_token(MODEL, 24) == 6 * (kernels + head) + 12 * 2 * 32 * 24
  assert mfu.utilisation(1000, 1e9, "NVIDIA H100 80GB HBM3", 1) == pytest.approx(1e12 / 989e12)
  assert mfu.utilisation(1000, 1e9, "cpu", 1) is None


# The sizes the configs' docstrings state (842,496 = 0.84M, 11.1M, 1.0B), exactly.
@pytest.mark.parametrize("name, expected", [("lm_tiny", 842_496), ("lm_small", 11_139_072),
                                            ("lm_1b", 1_007_609_856)])
def test_lm_configs_build_models_of_the_stated_size(name, expected):
  import importlib
  config = importlib.import_module(f"configs.{name}").get_config()
  model = build_model(config.model)
  tokens = jax.ShapeDtypeStruct((1, config.data.seq_len), jnp.int32)
  shapes = jax.eval_shape(lambda t: model.init(jax.random.PRNGKey(0), t), tokens)
  count = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  assert count == expected, count
  assert config.data.seq_len <= config.model.context_length


@pytest.mark.slow
@pytest.mark.parametrize("norm, tie_embeddings", [("rms", False), ("layer", True)])
def test_remat_recomputes_the_same_loss_and_gradients(norm, tie_embeddings):
  """remat trades memory for recompute only: on and off agree, for RMSNorm with an untied
  head and LayerNorm with a tied one (whose parameter trees differ as they should)."""
  results = {}
  for remat in (False, True):
    model, params, tokens = _model(norm=norm, tie_embeddings=tie_embeddings, remat=remat)

    def loss(p):
      logits = model.apply({"params": p}, tokens[:, :-1])
      return losses.token_cross_entropy(logits, {"label": tokens[:, 1:]}).mean()
    results[remat] = jax.value_and_grad(loss)(params)
  assert ("head" in results[False][1]) == (not tie_embeddings)
  norm_params = set(results[False][1]["block_0"]["norm_0"])
  assert norm_params == ({"scale"} if norm == "rms" else {"scale", "bias"})
  np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               results[True][1], results[False][1])


@pytest.mark.slow
def test_a_bpe_tokenizer_trained_on_the_text_is_saved_with_the_run_and_samples(tmp_path):
  from bigjax.inference import sample
  from bigjax.registry import ConfigError
  config = lm_tiny.get_config("small")
  with config.unlocked():
    config.data.update(path=str(_corpus(tmp_path)), tokenizer="bpe:300")
    config.train.num_steps = 30
    config.report.plots = config.report.html = False
  with pytest.raises(ConfigError, match=r"token ids up to \d+, but the model's vocabulary is "
                     "config.model.vocab_size=256"):
    train.run(config, str(tmp_path / "too_small"))
  with config.unlocked():
    config.model.vocab_size = 300
  results = train.run(config, str(tmp_path / "run"))
  assert np.isfinite(results["test_loss"])
  from tokenizers import Tokenizer
  tokenizer = Tokenizer.from_file(str(tmp_path / "run" / "tokenizer.json"))
  assert tokenizer.get_vocab_size() == 300
  prompt = "the quick"
  assert len(tokenizer.encode(prompt).ids) < len(prompt.encode())  # merges learnt
  texts = sample.sample(config, str(tmp_path / "run"), prompt, max_new_tokens=5,
                        temperature=0.0)
  assert texts[0].startswith(prompt) and len(texts[0]) > len(prompt)
  resumed = train.run(config, str(tmp_path / "run"))  # the same tokenizer is trained again
  assert resumed["steps"] == results["steps"]
  from bigjax.inference import export
  folder = export.export_hf(config, str(tmp_path / "run"))  # ships its tokenizer
  assert (tmp_path / "run" / "export_hf" / "tokenizer.json").read_text() == (
      tmp_path / "run" / "tokenizer.json").read_text()
  assert "PreTrainedTokenizerFast" in open(os.path.join(folder, "README.md")).read()
