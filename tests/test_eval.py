"""Evaluation: the Fréchet distance formula, the judge (trained on real images only), and `evaluate` on a tiny model."""

from __future__ import annotations

import torch

from latentdiff.evaluation import frechet_distance
from latentdiff.evaluation.evaluate import evaluate
from latentdiff.evaluation.judge import Judge, JudgeConfig, judge_images, train_judge
from latentdiff.data.config import DataConfig
from latentdiff.data.pixels import PixelCache

from test_train import make_shapes_dataset  # tests/ is on sys.path under pytest's default import mode


def test_frechet_distance_closed_forms():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) < 1e-6
    shift = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    assert abs(frechet_distance(a, a + shift) - 5.0) < 1e-6  # equal covariances: ‖Δμ‖²
    # N(0, I) vs N(0, 4I) in 3-D: Tr(I + 4I − 2·2I) = 3; sampled, so close rather than exact
    b = 2 * torch.randn(4000, 3, generator=g, dtype=torch.float64)
    assert abs(frechet_distance(a, b) - 3.0) < 0.2


def test_judge_learns_shapes_and_evaluate_runs(tmp_path, tiny_sd1):
    from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline

    data = make_shapes_dataset(tmp_path / "shapes", size=64, holdout=("yellow ring", "blue triangle"))
    cache = PixelCache.load_or_build(DataConfig(root=str(data), resolution=64, split="all"), tmp_path / "px.pt", progress=False)
    train = [i for i, r in enumerate(cache.records) if r.split == "train"]
    judge = train_judge(cache.images[train], [cache.records[i].subgroup for i in train], [cache.records[i].group for i in train],
                        JudgeConfig(epochs=40, batch_size=16, width=8, feature_dim=16), progress=False)
    _, sub, grp = judge_images(judge, cache.images[train].float() / 127.5 - 1)
    truth = torch.tensor([judge.subgroups.index(cache.records[i].subgroup) for i in train])
    assert (sub == truth).float().mean() > 0.7  # it fits the real images it was trained on
    judge.save(tmp_path / "judge.safetensors")
    again = Judge.load(tmp_path / "judge.safetensors")
    x = cache.images[:4].float() / 127.5 - 1
    assert torch.equal(again.features(x), judge.features(x)) and again.subgroups == judge.subgroups

    pipe = LatentDiffusionPipeline(tiny_sd1, device="cpu", dtype=torch.float32)
    r = evaluate(pipe, cache, judge, steps=2, per_prompt=2, progress=False)
    assert (r.held_out, r.images) == (2, 4)  # two held-out images, two generated each
    assert r.acc_subgroup_real in (0.0, 0.5, 1.0) and r.acc_subgroup_generated in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert r.fd_generated > 0 and r.fd_real_reference >= 0
