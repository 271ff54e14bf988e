"""Evaluation of generated images with a judge trained on real images only."""

from .judge import Judge, JudgeConfig, train_judge
from .metrics import frechet_distance

__all__ = ["Judge", "JudgeConfig", "train_judge", "frechet_distance"]
