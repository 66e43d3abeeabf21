"""Training loop: EMA, resume, data-parallel, fine-tuning."""

from mrdpm.train.config import TrainConfig, config_from_dict, load_config
from mrdpm.train.loop import RunSummary, Trainer, train

__all__ = ["RunSummary", "TrainConfig", "Trainer", "config_from_dict", "load_config", "train"]
