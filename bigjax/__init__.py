"""bigjax: build, pre-train and fine-tune neural networks from scratch with JAX and Flax."""

__version__ = "0.1.0"
