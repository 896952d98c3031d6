"""Data: sources (where arrays come from) and the pure pipeline that prepares them."""

from bigjax.data.pipeline import epoch_permutation
from bigjax.data.pipeline import padded_batches
from bigjax.data.pipeline import prepare
from bigjax.data.pipeline import PreparedData
from bigjax.data.pipeline import resolve_placement
from bigjax.data.pipeline import Split
from bigjax.data.pipeline import train_validation_indices
from bigjax.data.sources import load_raw
from bigjax.data.sources import RawData
from bigjax.data.sources import register_source
from bigjax.data.sources import SOURCES


def load(data_config) -> PreparedData:
  """Raw arrays from the configured source, limited, split and scaled."""
  return prepare(load_raw(data_config), data_config)
