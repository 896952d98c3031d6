"""What every config shares: the lessons' networks by variant name, the variant parsing
(`configs/x.py:cnn,small`), and `base_config`, the full set of keys with their defaults
(every config starts from it, so every key exists everywhere and a typo fails).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

MODELS = {
    "mlp": dict(name="mlp", hidden_sizes=(128,), activation="relu", dropout_rate=0.0,
                norm="none", num_classes=10),
    "mlp2": dict(name="mlp", hidden_sizes=(128, 64), activation="relu", dropout_rate=0.0,
                 norm="none", num_classes=10),
    "mlp3": dict(name="mlp", hidden_sizes=(256, 128, 64), activation="relu", dropout_rate=0.0,
                 norm="none", num_classes=10),
    # conv3x3(32)-pool-conv3x3(64)-pool-dense(64)-dense(10), valid convs, 2x2 max-pooling.
    "cnn": dict(name="cnn", conv_features=(32, 64), kernel_size=3, strides=1, padding="VALID",
                pool_size=2, norm="none", dense_sizes=(64,), activation="relu",
                dropout_rate=0.0, num_classes=10),
}
INITIALIZERS = dict(kernel_init="lecun_normal",  # he_normal xavier_uniform normal:0.05 ...
                    bias_init="zeros")            # (bigjax/models/initializers.py)
for _model in MODELS.values():
  _model.update(INITIALIZERS)
# Batch sizes of the lessons: 32 for the first MLP, 64 for the deeper ones and the CNN.
BATCH_SIZES = {"mlp": 32, "mlp2": 64, "mlp3": 64, "cnn": 64}
# Train steps per compiled call (a scan): on a CPU the per-call overhead is a large part of a
# small MLP's step. 1 for convolutions, which XLA:CPU runs several times slower inside a scan
# (jax-ml/jax#12868). Results are the same for any value; `python -m bench.steps_per_call`.
STEPS_PER_CALL = {"mlp": 10, "mlp2": 10, "mlp3": 10, "cnn": 1}
# Evaluation batches: the CNN's im2col columns must stay in the CPU's cache, which batches of
# 64 do and of 1000 do not (measured 2-3x slower); the MLPs do not care. Only speed: the
# same sums. A GPU barely notices 64.
EVAL_BATCH_SIZES = {"mlp": 1000, "mlp2": 1000, "mlp3": 1000, "cnn": 64}


def parse_arg(arg: str | None) -> tuple[str, bool]:
  """'cnn,small' -> ('cnn', True)."""
  tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
  small = "small" in tokens
  variants = [t for t in tokens if t != "small"]
  unknown = [t for t in variants if t not in MODELS]
  if unknown or len(variants) > 1:
    raise ValueError(f"Unknown config variant(s) {variants}: choose one of "
                     f"{sorted(MODELS)}, optionally with ',small'.")
  return (variants[0] if variants else "mlp"), small


def base_config(variant: str, small: bool) -> ml_collections.ConfigDict:
  """Everything but the dataset: shared by the MNIST-format configs."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = dict(MODELS[variant])

  config.data = dict(
      source="tfds",             # tfds | idx | folder | arrays | digits | diabetes |
                                 # "package.module:fn"
      name="mnist",              # TFDS name (or a label for local data)
      path="",                   # idx: folder of IDX files; folder: PATH/<class>/*.jpg (or
                                 # PATH/train/<class>, PATH/test/<class>); arrays: a .npz
                                 # or a folder of .npy files (bigjax/data/arrays.py)
      data_dir="",               # TFDS data_dir; "" = TFDS's default (~/tensorflow_datasets)
      download=True,             # let TFDS download and prepare (needs network and TensorFlow)
      train_split="train",
      test_split="test",
      validation_fraction=0.2,   # carved from train with split_seed
      split_seed=0,
      standardize=False,         # per-channel mean/std from the train split, after [0,1] scaling
      classes=(),                # e.g. (5, 6, 7, 8, 9): only these, relabelled 0..k-1
      labels_per_class=-1,       # >0: train on N labelled examples per class (few labels)
      max_train_examples=-1,     # >0: use only the first N (small runs)
      max_test_examples=-1,
      image_size=(),             # (H, W): resize every image (bilinear); () = as stored
      channels=0,                # folder: 1 (grayscale) or 3 (RGB); 0 = as most images are
      test_fraction=0.2,         # held out as test when the source has no test split
      skip_bad_images=False,     # folder: skip (and log) files that cannot be decoded
      # device: every split in device memory, batches gathered there (the fastest);
      # host: batches read on the host as they are needed (records folders, TFDS
      # array_record, memory-mapped .npy stream from disk) and prefetched; auto (the
      # default): device when the model-ready splits fit in device_limit_gb, else host.
      placement="auto",
      device_limit_gb=4.0,
      worker_count=0,            # host: grain worker processes reading (decoding) batches;
                                 # 0 = one background thread
      skip_bad_records=False,    # host: replace (and count) an unreadable record rather
                                 # than stop with its index
      # Train-split augmentation, on the device inside the train step (bigjax/data/augment.py);
      # 0/False = off. Validation and test data are never augmented.
      augment=dict(
          crop_padding=0,        # pad N pixels (zeros) each side, crop back at a random offset
          flip_lr=False,         # mirror left-right with probability 1/2
          flip_ud=False,         # flip upside down with probability 1/2
          rotate_degrees=0.0,    # rotate by a uniform angle in [-d, d]
          scale=0.0,             # zoom by a uniform factor in [1 - s, 1 + s]
          translate=0.0,         # shift by up to this fraction of height and width
          cutout_size=0,         # zero one random N x N square (random erasing)
          mixup_alpha=0.0,       # mix pairs with Beta(a, a) weights; labels become soft
          # Token inputs: BERT's masked-LM (labels become the chosen tokens, -1 elsewhere;
          # loss masked_token_cross_entropy): the fraction chosen, the [MASK] id, and the
          # first id that may be chosen (below it: padding and [CLS]/[SEP]).
          mlm_probability=0.0, mlm_mask_id=3, mlm_first_regular_id=4,
      ),
  )
  config.loss = dict(
      name="softmax_cross_entropy",  # | multiclass_hinge | sigmoid_binary_cross_entropy |
                                     #   mean_squared_error | mean_absolute_error | "pkg.mod:fn"
      label_smoothing=placeholder(float),  # softmax_cross_entropy only; None = 0
      l1=0.0,                        # + l1 * sum|w| over params matching penalty_mask
      l2=0.0,                        # + l2 * sum w^2 over the same
      penalty_mask="kernel",         # regex on '/'-joined param paths: kernels, not biases
  )
  config.optimizer = dict(
      name="adam",        # sgd momentum nesterov adam adamw rmsprop adagrad adafactor lamb lion
      learning_rate=1e-3,
      # The optimizer's own hyperparameters; None = its default. Setting one that the chosen
      # optimizer does not take is an error.
      b1=placeholder(float), b2=placeholder(float), eps=placeholder(float),
      momentum=placeholder(float), nesterov=placeholder(bool), decay=placeholder(float),
      weight_decay=0.0,              # decoupled (AdamW-style, scaled by the learning rate)
      weight_decay_mask="kernel",    # regex on param paths
      clip_norm=0.0,                 # global-norm gradient clipping; 0 = off
      schedule=dict(
          name="constant",   # constant cosine linear exponential piecewise reduce_on_plateau
          warmup_steps=0,    # linear warmup from 0 before the schedule
          decay_steps=0,     # cosine/linear: steps to decay over; 0 = to the end of training
          end_factor=0.0,    # cosine/linear: final multiplier of learning_rate
          decay_rate=0.5,    # exponential: multiplier per transition_steps
          transition_steps=1000,
          boundaries=(),     # piecewise: steps at which to multiply ...
          boundary_scales=(),  # ... by these factors
          plateau_factor=0.5, plateau_patience=5, plateau_cooldown=0,
          plateau_accumulation_steps=200,  # reduce_on_plateau: training steps per loss average
      ),
  )
  config.train = dict(
      batch_size=BATCH_SIZES[variant],
      num_epochs=5,
      num_steps=-1,        # >0: train exactly this many steps instead (may end mid-epoch)
      # Stop once a metric reaches a value, checked after each epoch's evaluation:
      # "split/metric>=value", e.g. "validation/accuracy>=0.9" or "train/loss<=0.2".
      stop_when="",
      # Stop after `patience` evaluations without improvement of `metric` (e.g.
      # "validation/loss"; "" = off); mode "auto" minimises losses and errors.
      early_stopping=dict(metric="", mode="auto", patience=5, min_delta=0.0),
      grad_accum_steps=1,  # >1: split each batch into this many micro-batches (less memory)
      steps_per_call=STEPS_PER_CALL[variant],  # same results for any value; speed only
      log_every_steps=500,
      log_every_seconds=30.0,  # and at least this often (a slow config is never silent)
  )
  config.eval = dict(
      batch_size=EVAL_BATCH_SIZES[variant],
      # bigjax/core/metrics.py: loss accuracy top<k>_accuracy precision recall f1 support
      # confusion_matrix mse mae r2, or "package.module:factory".
      metrics="loss,accuracy,precision,recall,f1,confusion_matrix",
      every_epoch="validation",     # splits evaluated after each epoch
      at_end="validation,test",     # splits evaluated when training ends
  )
  config.checkpoint = dict(
      max_to_keep=2,
      # Also keep the best checkpoint by this metric ("split/metric"; "" = none) in
      # <workdir>/checkpoints_best; evaluate it with --mode=eval --step=best.
      best_metric="validation/accuracy",
      best_mode="auto",       # max | min | auto: min for losses and errors, else max
      # A workdir's checkpoint is only resumed under the same config (but for the keys in
      # bigjax.train.RESUMABLE_CHANGES); set True to resume anyway.
      allow_config_change=False,
      every_steps=0,          # also save every N steps (0: at each epoch end only)
      # Epoch-end saves at most this often, counted from the start (the last epoch, a stop
      # and SIGTERM/SIGINT always save; a better best is kept in memory until the next
      # save): short epochs would otherwise spend several percent of their time saving.
      # 0 = every epoch.
      min_interval_seconds=10.0,
      resume_from="",         # resume another run's full train state (a workdir or step folder)
  )
  # Initialise params from another run (fine-tuning). Precedence: a checkpoint in this
  # workdir > checkpoint.resume_from > init_from > fresh init.
  config.init_from = dict(
      path="",                # a workdir, its checkpoints[_best] folder, or one <step> folder
      step="latest",          # latest | best | a step number
      skip="",                # regex of param paths not to load (e.g. "^head/"): re-initialised
      reinit_mismatched="",   # regex of paths that re-initialise when their shapes differ
      strict=True,            # else load what fits and re-initialise the rest
      model_state=True,       # also load BatchNorm statistics
  )
  config.finetune = dict(
      freeze="",              # regex of param paths that do not train (no optimizer state)
      lr_multipliers="",      # "regex=factor;regex=factor" on the learning rate
      layer_decay=1.0,        # <1: lr x decay^(top-level layers above), the head gets 1
      freeze_batch_stats=False,  # keep BatchNorm running statistics as loaded
  )
  config.lora = dict(
      rank=0,                 # >0: train rank-r adapters on matching kernels; base frozen
      alpha=8.0,              # the adapters' scale is alpha / rank
      targets="kernel",       # regex of dense/conv kernel paths that get adapters
      train_base="",          # regex of base params that train anyway (e.g. "head/")
  )
  config.prune = dict(
      sparsity=0.0,           # >0: magnitude-prune kernels to this fraction of zeros
      scope="global",         # global: all kernels ranked together (keeps small layers
                              # dense, measured better: bench/README.md) | layer: each kernel
      include="kernel",       # regex of param paths pruned (2-D and larger only)
      initial_sparsity=0.0,   # Zhu & Gupta's gradual schedule: from this at start_step ...
      start_step=0,
      end_step=-1,            # ... to `sparsity` at end_step (-1: 75% of the steps)
      every_steps=100,        # masks recomputed this often in between
  )
  config.quantize = dict(
      aware="",               # dynamic | static: quantization-aware training (qwix's fake int8
                              # in the forward pass); then --mode=quantize converts the run
  )
  config.distill = dict(
      teacher="",             # a finished run's workdir: train this model against it
      alpha=0.5,              # weight of the hard-label loss; 1 - alpha: the teacher's
      temperature=4.0,        # softens both distributions (the soft term scaled by T^2)
      step="latest",          # the teacher's checkpoint: latest | best | a step
  )
  config.parallel = dict(
      mode="jit",             # jit: one program over a device mesh (named shardings); pmap
      platform="",            # "": whatever JAX found; cpu | gpu | tpu: fail unless it is that
      num_devices=-1,         # -1: every device JAX sees; N: the first N
      # Mesh axis sizes (their product is the device count; -1 = what is left). The batch
      # is split over both; params and optimizer state are replicated over "data" and,
      # when fsdp > 1, the large ones split over "fsdp" (ZeRO-3/FSDP style).
      mesh=dict(data=-1, fsdp=1),
      fsdp_min_size=2 ** 18,  # arrays with at least this many elements are split ...
      fsdp_regex="",          # ... and those whose path matches (e.g. "kernel")
      distributed="auto",     # multi-host runtime: auto (when the environment names several
                              # processes: TPU pod slice, SLURM, JAX_COORDINATOR_ADDRESS), on, off
  )
  config.precision = dict(
      compute_dtype="auto",   # auto: bfloat16 on TPU, float32 elsewhere | float32 bfloat16 float16
      param_dtype="float32",  # stored params (and so gradients and optimizer state)
  )
  config.report = dict(
      plots=True,        # learning curves (each epoch), confusion matrix, prediction grids
      html=True,         # report.html and report.md at the end
      tensorboard=True,  # event files in <workdir>/tensorboard (no TensorFlow needed)
  )
  # Extra periodic work in the training loop (trackers, custom logging): "package.module:Name"
  # of a bigjax.training.hooks.Hook subclass or factory, called with no arguments.
  config.hooks = ()
  if small:
    config.data.max_train_examples = 2000
    config.data.max_test_examples = 1000
    config.train.num_epochs = 1
    config.train.log_every_steps = 20
  return config
