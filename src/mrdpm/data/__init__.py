"""Datasets: slices, patches and volumes from image or k-space files, with class labels."""

from mrdpm.data.config import DataConfig, SourceConfig
from mrdpm.data.images import ImageBatch, TrainingImages
from mrdpm.data.normalise import PercentileNormalisation, percentile_factor

__all__ = ["DataConfig", "ImageBatch", "PercentileNormalisation", "SourceConfig", "TrainingImages",
           "percentile_factor"]
