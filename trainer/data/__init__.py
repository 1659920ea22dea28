"""Interaction data for training: load a benchmark, a user's files or synthetic data as one ``Dataset``."""

from trainer.data.dataset import Dataset, DatasetError
from trainer.data.resolve import load_dataset
from trainer.data.synthetic import SyntheticConfig, make_synthetic

__all__ = ["Dataset", "DatasetError", "SyntheticConfig", "load_dataset", "make_synthetic"]
