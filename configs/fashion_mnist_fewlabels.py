"""Few labels: the 784-256-128-10 MLP trained on 600 labelled Fashion-MNIST images (60 per
class), from scratch or initialised from the pre-trained autoencoder's encoder.

  python run.py --config=configs/fashion_mnist_fewlabels.py                      # scratch
  python run.py --config=configs/fashion_mnist_fewlabels.py \
      --config.init_from.path=runs/pretrain --workdir=runs/fewlabels_pretrained  # fine-tune
The 600 examples are fixed by data.split_seed; config.seed varies the init and order.
Nothing is selected on the validation split (no early stopping, no best checkpoint): the
result is the test accuracy after the fixed number of epochs.
Measured results: bench/results/few_labels_cpu2.md (bench/few_labels.py).
"""

from __future__ import annotations

import ml_collections

from configs import fashion_mnist, fashion_mnist_pretrain


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = fashion_mnist.get_config("mlp")
  config.model.hidden_sizes = fashion_mnist_pretrain.ENCODER
  config.data.labels_per_class = 60
  config.train.batch_size = 32
  config.train.num_epochs = 30
  config.train.steps_per_call = 1
  config.train.log_every_steps = 100
  config.eval.every_epoch = ""
  config.checkpoint.best_metric = ""
  config.checkpoint.max_to_keep = 1
  # Loaded from the autoencoder: its encoder; its decoder is unused and the head is new.
  config.init_from.skip = "^(decoder_|head/)"
  config.report.plots = False
  config.lock()
  return config
