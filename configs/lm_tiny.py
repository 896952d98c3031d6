"""A tiny GPT-style byte-level language model, pre-trained on a text file or folder; on a
CPU in minutes.

  python run.py --config=configs/lm_tiny.py            # Debian's fortunes (apt-get install fortunes)
  python run.py --config=configs/lm_tiny.py --config.data.path=my_corpus.txt
  python run.py --config=configs/lm_tiny.py:tiny_shakespeare   # TFDS by name (network)
  python run.py --mode=sample --workdir=runs/lm_tiny --prompt="The meaning of life"

4 pre-LayerNorm blocks of width 128 and 4 heads, learned positions, a tied head (about
0.85M parameters); windows of 128 bytes, batch 32; AdamW 3e-3 with 200 warmup steps and
cosine decay. The last 5% of the corpus is the test split and the 5% before it validation
(split by position). Validation loss, perplexity and bits per byte after every epoch.
"""

from __future__ import annotations

import ml_collections

from configs import base

FORTUNES = "/usr/share/games/fortunes"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
  small = "small" in tokens
  tfds_name = next((t for t in tokens if t != "small"), None)
  if tfds_name not in (None, "tiny_shakespeare", "lm1b"):
    raise ValueError(f'Unknown variant "{arg}": use nothing, "small", "tiny_shakespeare" or '
                     '"lm1b" (TFDS text datasets; any other: --config.data.source=tfds_text '
                     "--config.data.name=NAME), comma-separated.")
  config = base.base_config("mlp", small=False)
  config.model = dict(name="gpt", vocab_size=256, context_length=128, hidden_size=128,
                      depth=4, num_heads=4, mlp_ratio=4.0, dropout_rate=0.0,
                      positions="learned", norm="layer", tie_embeddings=True, remat=False)
  config.data.update(source="text", name="text", path=FORTUNES, download=False,
                     validation_fraction=0.05, test_fraction=0.05)
  config.data.seq_len = 128
  # bytes (vocab 256) | bpe:N (a byte-level BPE of N tokens trained on the training text;
  # set model.vocab_size=N) | the path of a tokenizer.json. Saved as WORKDIR/tokenizer.json.
  config.data.tokenizer = "bytes"
  if tfds_name:  # TFDS's own train and test splits; validation: the end of train
    config.data.update(source="tfds_text", name=tfds_name, path="", download=True)
  config.loss.name = "token_cross_entropy"
  config.optimizer.update(name="adamw", learning_rate=3e-3, weight_decay=0.1, clip_norm=1.0)
  config.optimizer.schedule.update(name="cosine", warmup_steps=200)
  config.train.update(batch_size=32, num_epochs=3, steps_per_call=1, log_every_steps=50)
  config.eval.update(batch_size=64, metrics="loss,perplexity,bits_per_byte",
                     every_epoch="validation", at_end="validation,test")
  config.checkpoint.best_metric = "validation/loss"
  config.report.plots = True
  config.sample = dict(prompt="The ", max_new_tokens=200, temperature=0.8, top_k=0,
                       top_p=0.95, num_samples=1, seed=0)
  if small:
    config.model.update(hidden_size=32, depth=1, num_heads=2, context_length=32)
    config.data.seq_len = 32
    config.train.update(num_epochs=1, num_steps=20, log_every_steps=5)
    config.optimizer.schedule.warmup_steps = 5
  config.lock()
  return config
