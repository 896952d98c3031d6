"""Text classification, the lessons' worked example: which of 6 categories a fortune comes
from (Debian's fortunes: computers, politics, science, law, food, education; 2,984 texts,
a fixed 20% held out as test), with a small BERT-style encoder trained from scratch on
byte tokens ([CLS] first, padding masked).

  apt-get install fortunes
  python run.py --config=configs/fortunes_bert.py
  python run.py --config=configs/fortunes_bert.py:small     # a quick smoke run

The encoder is 2 post-LN layers of width 128 and 2 heads (BERT-tiny's shape), the pooled
[CLS] token feeding a 6-way classifier; AdamW 1e-3 with warmup and cosine decay, batch 32,
sequences of 128 bytes. Results: bench/README.md ("Text classification").
"""

from __future__ import annotations

import ml_collections

from bigjax.data.text_classification import BYTE_VOCAB
from configs import base

FORTUNES = "/usr/share/games/fortunes"
CATEGORIES = ("computers", "politics", "science", "law", "food", "education")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "small"):
    raise ValueError(f'Unknown variant "{arg}": use nothing or "small".')
  small = arg == "small"
  config = base.base_config("mlp", small=False)
  config.model = dict(name="bert", vocab_size=BYTE_VOCAB, hidden_size=128, depth=2,
                      num_heads=2, intermediate_size=512, max_positions=128,
                      type_vocab_size=2, dropout_rate=0.1, head="classification",
                      num_classes=len(CATEGORIES), pooler=True)
  config.data.update(source="text_classification", name="fortunes", path=FORTUNES,
                     download=False, validation_fraction=0.1, test_fraction=0.2)
  config.data.categories = CATEGORIES
  config.data.seq_len = 128
  config.data.tokenizer = "bytes"        # or the path of a Hugging Face tokenizer.json
  config.data.text_column = "text"       # (.csv/.tsv/.jsonl files)
  config.data.label_column = "label"
  config.data.record_separator = "%"     # (files holding many texts, as fortune's)
  config.loss.name = "softmax_cross_entropy"
  config.optimizer.update(name="adamw", learning_rate=1e-3, weight_decay=0.01, clip_norm=1.0)
  config.optimizer.schedule.update(name="cosine", warmup_steps=100)
  config.train.update(batch_size=32, num_epochs=10, steps_per_call=1, log_every_steps=50)
  config.eval.update(batch_size=128, metrics="loss,accuracy,precision,recall,f1,"
                     "confusion_matrix")
  if small:
    config.model.update(hidden_size=32, depth=1, num_heads=2, intermediate_size=64)
    config.data.seq_len = 32
    config.model.max_positions = 32
    config.train.update(num_epochs=1, log_every_steps=10)
    config.optimizer.schedule.warmup_steps = 5
  config.lock()
  return config
