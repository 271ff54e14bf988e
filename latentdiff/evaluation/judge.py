"""The judge: a small CNN that classifies an emoji image's Unicode subgroup and group, trained on real images only."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import LatentDiffError


@dataclass
class JudgeConfig:
    """Architecture and training of the judge."""

    resolution: int = 32                    # images are resized to this side before the CNN
    width: int = 32                         # channels of the first conv; doubled per stage
    feature_dim: int = 128                  # penultimate features (the Fréchet space)
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0


class Judge(nn.Module):
    """CNN: image (B, 3, H, W) in [-1, 1] → features (B, feature_dim), subgroup and group logits."""

    def __init__(self, config: JudgeConfig, subgroups: list[str], groups: list[str]):
        super().__init__()
        self.config, self.subgroups, self.groups = config, list(subgroups), list(groups)
        w = config.width
        layers, ch = [], 3
        for out in (w, 2 * w, 4 * w):
            layers += [nn.Conv2d(ch, out, 3, padding=1), nn.BatchNorm2d(out), nn.SiLU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.BatchNorm2d(out), nn.SiLU(), nn.MaxPool2d(2)]
            ch = out
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(ch, config.feature_dim)
        self.head_sub = nn.Linear(config.feature_dim, len(subgroups))
        self.head_group = nn.Linear(config.feature_dim, len(groups))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(self.config.resolution,) * 2, mode="bilinear", antialias=True, align_corners=False)
        h = self.body(x).mean(dim=(2, 3))  # (B, C) global average pool
        return F.silu(self.proj(h))  # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return f, self.head_sub(f), self.head_group(f)

    def save(self, path: str | os.PathLike) -> Path:
        """Weights as safetensors with the config and class names in its metadata, atomically."""
        from ..fileio import save_safetensors

        meta = {"config": json.dumps(asdict(self.config)), "subgroups": json.dumps(self.subgroups), "groups": json.dumps(self.groups)}
        return save_safetensors(self.state_dict(), path, metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Judge":
        from ..fileio import read_safetensors_with_metadata

        try:
            state, meta = read_safetensors_with_metadata(path)
            judge = cls(JudgeConfig(**json.loads(meta["config"])), json.loads(meta["subgroups"]), json.loads(meta["groups"]))
        except Exception as e:
            raise LatentDiffError(f"{path} is not a judge file ({str(e).splitlines()[0][:100]})") from None
        judge.load_state_dict(state)
        return judge.eval()


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Small random shifts and scale jitter (no flips: emoji direction carries meaning)."""
    b = x.shape[0]
    scale = 1 + (torch.rand(b, generator=g) - 0.5) * 0.2
    shift = (torch.rand(b, 2, generator=g) - 0.5) * 0.16
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - 1, grid, padding_mode="zeros", align_corners=False) + 1  # shifted so the zero padding is white (+1)


def train_judge(images: torch.Tensor, subgroups: list[str], groups: list[str], config: JudgeConfig | None = None,
                progress: bool = True) -> Judge:
    """Fit the judge on real images (uint8 (N, 3, H, W)) with their subgroup and group labels."""
    config = config or JudgeConfig()
    if len(images) != len(subgroups) or len(images) != len(groups):
        raise LatentDiffError("judge training needs one subgroup and one group label per image")
    sub_names, group_names = sorted(set(subgroups)), sorted(set(groups))
    ys = torch.tensor([sub_names.index(s) for s in subgroups])
    yg = torch.tensor([group_names.index(s) for s in groups])
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    judge = Judge(config, sub_names, group_names)
    opt = torch.optim.AdamW(judge.parameters(), lr=config.lr, weight_decay=0.05)
    n = len(images)
    steps = config.epochs * max(1, n // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    judge.train()
    for _ in tqdm(range(steps), desc="train judge", unit="step", disable=None if progress else True):
        idx = torch.randint(n, (config.batch_size,), generator=g)
        x = _augment(images[idx].float() / 127.5 - 1, g)
        _, ls, lg = judge(x)
        loss = F.cross_entropy(ls, ys[idx]) + 0.5 * F.cross_entropy(lg, yg[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return judge.eval()


@torch.no_grad()
def judge_images(judge: Judge, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (N, D) and predicted subgroup/group indices (N,) for images in [-1, 1] (N, 3, H, W)."""
    feats, subs, grps = [], [], []
    for i in range(0, len(images), batch):
        f, ls, lg = judge(images[i:i + batch])
        feats.append(f), subs.append(ls.argmax(1)), grps.append(lg.argmax(1))
    return torch.cat(feats), torch.cat(subs), torch.cat(grps)
