"""Smaller models: quantization (qwix), pruning and distillation."""
