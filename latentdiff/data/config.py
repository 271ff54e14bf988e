"""The data section of a training recipe; free of torch so that the CLI's parser builds without it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    """Where the images come from and how they are shaped."""

    root: str = ""                          # image folder (metadata.jsonl or kohya .txt pairs)
    resolution: int = 64                    # square side in pixels
    split: str = "train"                    # "train" (held-out emoji excluded) or "all"
    templates: str = "emoji"                # "emoji" (EMOJI_TEMPLATES) or "plain" (caption as is)
    caption_dropout: float = 0.1            # empty caption rate for CFG, https://arxiv.org/abs/2207.12598
