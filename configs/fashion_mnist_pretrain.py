"""Self-supervised pre-training: a denoising autoencoder on all 60,000 Fashion-MNIST
training images, labels unused.

The encoder (784-256-128, the parameter names of the MLP family) is what
configs/fashion_mnist_fewlabels.py loads through init_from. Run:
  python run.py --config=configs/fashion_mnist_pretrain.py --workdir=runs/pretrain
Measured results: bench/results/few_labels_cpu2.md (bench/few_labels.py).
"""

from __future__ import annotations

import ml_collections

from configs import fashion_mnist

ENCODER = (256, 128)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  small = arg == "small"
  config = fashion_mnist.get_config("mlp,small" if small else "mlp")
  with config.unlocked():
    config.model = dict(name="denoising_autoencoder", hidden_sizes=ENCODER, activation="relu",
                        noise_std=0.5, mask_rate=0.25, kernel_init="lecun_normal",
                        bias_init="zeros")
  config.loss.name = "reconstruction_mse"
  config.data.validation_fraction = 0.0  # every training image; the labels are never read
  config.train.batch_size = 128
  config.train.num_epochs = 30 if not small else 1
  config.train.steps_per_call = 10
  config.eval.metrics = "loss"
  config.eval.every_epoch = ""
  config.eval.at_end = "test"       # reconstruction error on the test images
  config.checkpoint.best_metric = ""
  config.lock()
  return config
