"""Text classification, the lessons' worked example: which of 6 categories a fortune comes
from (Debian's fortunes: computers, politics, science, law, food, education; 2,984 texts,
a fixed 20% held out as test), with a small BERT-style encoder trained from scratch on
WordPiece tokens (a 4,096-token vocabulary trained on the training texts, saved with the
run; [CLS] first, padding masked).

  apt-get install fortunes
  python run.py --config=configs/fortunes_bert.py
  python run.py --config=configs/fortunes_bert.py:small     # a quick smoke run, byte tokens
  python run.py --config=configs/fortunes_bert.py:tiny      # BERT-tiny's shape

Pre-trained first with masked-LM on the texts of every fortune file (labels unused; its own
tokenizer, trained on all of them), then fine-tuned with that tokenizer (the pre-training's
masked-LM head left behind, a new pooler and classifier):

  python run.py --config=configs/fortunes_bert.py:mlm --workdir=runs/fortunes_mlm
  python run.py --config=configs/fortunes_bert.py --workdir=runs/fortunes_finetuned \
      --config.init_from.path=runs/fortunes_mlm \
      --config.init_from.skip='^(mlm_|pooler|classifier)' \
      --config.data.tokenizer=runs/fortunes_mlm/tokenizer.json

The encoder is BERT-mini (4 post-LN layers of width 256, 4 heads; `:tiny` for BERT-tiny's
2 of width 128), the mean of its non-padding tokens pooled into a 6-way classifier (the [CLS] token, BERT's choice, is
left untrained by a masked-LM pre-training alone: fine-tuned from one, a [CLS] classifier
stayed at chance on a corpus where a mean-pooled one reached 1.0); AdamW 1e-3 with warmup
and cosine decay, batch 32, 64 tokens per text (byte tokens instead: 0.40 test accuracy,
barely above the largest class's share; WordPiece: 0.65). Results: bench/README.md ("Text
classification").
"""

from __future__ import annotations

import ml_collections

from bigjax.data.text_classification import BYTE_VOCAB
from bigjax.models import bert
from configs import base

FORTUNES = "/usr/share/games/fortunes"
CATEGORIES = ("computers", "politics", "science", "law", "food", "education")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  tokens = [t for t in (arg or "").split(",") if t]
  if set(tokens) - {"small", "mlm", "tiny"}:
    raise ValueError(f'Unknown variant "{arg}": use nothing, "mlm", "tiny" and/or "small".')
  small, mlm = "small" in tokens, "mlm" in tokens
  config = base.base_config("mlp", small=False)
  config.model = dict(name="bert", vocab_size=4096, max_positions=64,
                      **bert.sized("tiny" if "tiny" in tokens else "mini"),
                      type_vocab_size=2, dropout_rate=0.1, pre_norm=False,
                      head="classification",
                      num_classes=len(CATEGORIES), pooler=True, pool="mean")
  config.data.update(source="text_classification", name="fortunes", path=FORTUNES,
                     download=False, validation_fraction=0.1, test_fraction=0.2)
  config.data.categories = CATEGORIES
  config.data.seq_len = 64
  # wordpiece:N / bpe:N (trained on the training texts), "bytes", or a tokenizer.json's path
  config.data.tokenizer = "wordpiece:4096"
  config.data.text_column = "text"       # (.csv/.tsv/.jsonl files)
  config.data.label_column = "label"
  config.data.record_separator = "%"     # (files holding many texts, as fortune's)
  config.data.pack_texts = False         # (masked-LM: texts end to end in rows, no padding)
  config.loss.name = "softmax_cross_entropy"
  config.optimizer.update(name="adamw", learning_rate=1e-3, weight_decay=0.01, clip_norm=1.0)
  config.optimizer.schedule.update(name="cosine", warmup_steps=100)
  config.train.update(batch_size=32, num_epochs=10, steps_per_call=1, log_every_steps=50)
  config.eval.update(batch_size=128, metrics="loss,accuracy,precision,recall,f1,"
                     "confusion_matrix")
  if mlm:  # pre-training: every fortune file's texts, BERT's masking, no labels used
    del config.model["num_classes"]
    config.model.update(head="mlm", pooler=False)
    config.data.categories = ()
    config.data.test_fraction = 0.05
    # One text per row, padded, as the classifier reads them. data.pack_texts=True packs
    # the texts end to end instead: no padding (a fortune averages 50 WordPiece tokens, so
    # 45% of these rows' slots are padding) and no text cut short; but here the masked-LM
    # learned slower that way (BERT-tiny's loss after 2,000 steps: 6.08 packed, 5.63 not).
    config.data.augment.mlm_probability = 0.15
    config.loss.name = "masked_token_cross_entropy"
    # Validation and test masked once (fixed positions): loss and accuracy on those tokens.
    config.eval.update(every_epoch="validation", at_end="validation,test",
                       metrics="loss,masked_accuracy")
    config.checkpoint.best_metric = "validation/loss"
    config.report.plots = False
    # 15 epochs (6,090 steps): 10 gave a pre-training that fine-tuned below scratch
    # (bench/README.md, "Text classification").
    config.train.num_epochs = 15
  if small:
    config.model.update(hidden_size=32, depth=1, num_heads=2, intermediate_size=64,
                        vocab_size=BYTE_VOCAB, max_positions=32)
    config.data.update(seq_len=32, tokenizer="bytes")
    config.train.update(num_epochs=1, log_every_steps=10)
    config.optimizer.schedule.warmup_steps = 5
  config.lock()
  return config
