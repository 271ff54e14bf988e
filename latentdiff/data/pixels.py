"""The decoded-pixel cache: every image of a dataset folder decoded once at one square resolution and kept in memory
(and on disk, keyed by folder, resolution and split); the from-scratch stages and `latentdiff eval` read it."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..fileio import atomic_write
from .config import DataConfig
from .dataset import ImageCaptionDataset, Record


class PixelCache:
    """All training images decoded once at one resolution: uint8 (N, 3, R, R) plus their records."""

    def __init__(self, images: torch.Tensor, records: list[Record], report=None):
        self.images, self.records = images, records
        self.report = report  # the scan's ScanReport when built now (skipped images counted), None when loaded

    @classmethod
    def load_or_build(cls, data: DataConfig, cache_path: Path, progress: bool = True) -> "PixelCache":
        if cache_path.is_file():
            blob = torch.load(cache_path, weights_only=False)
            if blob.get("key") == _cache_key(data):
                return cls(blob["images"], [Record(**r) for r in blob["records"]])
        split = "train" if data.split == "train" else None
        ds = ImageCaptionDataset(data.root, resolution=data.resolution, split=split, progress=progress)
        images = torch.empty((len(ds), 3, data.resolution, data.resolution), dtype=torch.uint8)
        for i in tqdm(range(len(ds)), desc="decode images", unit="img", disable=None if progress else True):
            images[i] = ((ds[i]["pixel_values"] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        records = [{**asdict(r), "path": str(r.path)} for r in ds.records]
        atomic_write(cache_path, lambda tmp: torch.save({"key": _cache_key(data), "images": images, "records": records}, tmp))
        return cls(images, [Record(**r) for r in records], ds.report)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, seed: int, step: int, global_batch: int, rank: int, world: int,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, list[int]]:
        """This process's slice of step's batch: pixels in [-1, 1] (b, 3, R, R) on device, and their indices."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(len(self.images), (global_batch,), generator=g)[rank::world].tolist()
        return self.images[idx].to(device).float() / 127.5 - 1.0, idx  # uint8 crosses to the device: 4× fewer bytes


def _cache_key(data: DataConfig) -> str:
    return f"{Path(data.root).resolve()}|{data.resolution}|{data.split}|v1"
