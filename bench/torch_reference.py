"""A plain PyTorch loop of the lessons' networks: the speed and accuracy reference.

Same data (loaded and split by bigjax, so the examples are identical), same network, Adam
1e-3, same batch size and epochs, tensors preloaded, PyTorch's default initialisation,
2 threads. Prints one JSON line like bench/run_config.py.

  python -m bench.torch_reference --model=mlp|mlp2|mlp3|cnn [--epochs=5] [--seed=0]

Needs PyTorch (not a bigjax dependency): pip install torch (on this project's dev machines,
`pip install torch==2.13.0` takes the CPU build from local disk).
"""

import argparse
import json
import sys
import time

import numpy as np
import torch
from torch import nn

from bigjax import data as data_lib
from configs import fashion_mnist


def build(variant: str) -> nn.Module:
  if variant == "cnn":
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(5 * 5 * 64, 64), nn.ReLU(), nn.Linear(64, 10))
  widths = {"mlp": [128], "mlp2": [128, 64], "mlp3": [256, 128, 64]}[variant]
  layers, fan_in = [nn.Flatten()], 784
  for w in widths:
    layers += [nn.Linear(fan_in, w), nn.ReLU()]
    fan_in = w
  return nn.Sequential(*layers, nn.Linear(fan_in, 10))


def accuracy(model, images, labels, batch=1000):
  model.eval()
  correct = 0
  with torch.no_grad():
    for i in range(0, len(labels), batch):
      correct += (model(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum().item()
  model.train()
  return correct / len(labels)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", default="mlp", choices=["mlp", "mlp2", "mlp3", "cnn"])
  parser.add_argument("--epochs", type=int, default=None)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threads", type=int, default=2)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)

  config = fashion_mnist.get_config(args.model)
  epochs = args.epochs or config.train.num_epochs
  batch_size = config.train.batch_size
  data = data_lib.load(config.data)
  to_nchw = lambda s: (torch.from_numpy(np.ascontiguousarray(s.inputs.transpose(0, 3, 1, 2))),
                       torch.from_numpy(s.targets.astype(np.int64)))
  train_x, train_y = to_nchw(data.train)
  val_x, val_y = to_nchw(data.validation)
  test_x, test_y = to_nchw(data.test)

  model = build(args.model)
  optimizer = torch.optim.Adam(model.parameters(), lr=config.optimizer.learning_rate)
  loss_fn = nn.CrossEntropyLoss()
  steps_per_epoch = len(train_y) // batch_size
  train_seconds = eval_seconds = 0.0
  for epoch in range(epochs):
    t0 = time.perf_counter()
    order = torch.from_numpy(data_lib.epoch_permutation(config.seed + args.seed, epoch,
                                                        len(train_y)).astype(np.int64))
    for i in range(steps_per_epoch):
      idx = order[i * batch_size:(i + 1) * batch_size]
      optimizer.zero_grad(set_to_none=True)
      loss = loss_fn(model(train_x[idx]), train_y[idx])
      loss.backward()
      optimizer.step()
    train_seconds += time.perf_counter() - t0
    t0 = time.perf_counter()
    val_acc = accuracy(model, val_x, val_y)
    eval_seconds += time.perf_counter() - t0
    print(f"epoch {epoch + 1}: loss {loss.item():.4f} validation acc {val_acc:.4f}",
          file=sys.stderr)
  print(json.dumps({
      "config": f"torch:{args.model}", "seed": args.seed,
      "train_seconds": round(train_seconds, 3), "eval_seconds": round(eval_seconds, 3),
      "steady_examples_per_second": round(steps_per_epoch * epochs * batch_size / train_seconds),
      "test_accuracy": accuracy(model, test_x, test_y),
      "num_params": sum(p.numel() for p in model.parameters()),
      "device": "cpu", "torch": torch.__version__, "threads": args.threads,
  }), flush=True)


if __name__ == "__main__":
  main()
