"""Data: sources (where arrays come from) and the pure pipeline that prepares them."""

from bigjax.data.pipeline import (PreparedData, Split, epoch_permutation, padded_batches,
                                  prepare, train_validation_indices)
from bigjax.data.sources import SOURCES, RawData, load_raw, register_source


def load(data_config) -> PreparedData:
  """Raw arrays from the configured source, limited, split and scaled."""
  return prepare(load_raw(data_config), data_config)
