"""`latentdiff eval`: generate the held-out emoji from their captions and compare them with the real ones through the judge."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..defaults import SAMPLING_DEFAULTS
from ..errors import LatentDiffError
from .judge import Judge, JudgeConfig, judge_images, train_judge
from .metrics import frechet_distance


@dataclass
class EvalResult:
    """The numbers `latentdiff eval` reports."""

    held_out: int                   # held-out emoji judged (subgroup known to the judge)
    images: int                     # generated images
    acc_subgroup_real: float        # judge top-1 subgroup accuracy on the real held-out images
    acc_subgroup_generated: float   # … on images generated from their captions
    acc_group_real: float           # coarse group accuracy, real
    acc_group_generated: float      # … generated
    fd_generated: float             # Fréchet distance (judge features): generated vs real held-out
    fd_real_reference: float        # the same between real train images and real held-out (the floor)
    steps: int
    sampler: str
    guidance: float
    seconds: float


def load_real(root: str, resolution: int, work: Path, progress: bool = True):
    """All real images (train + held-out) at the model's resolution, cached in work/."""
    from ..data.config import DataConfig
    from ..data.pixels import PixelCache

    return PixelCache.load_or_build(DataConfig(root=root, resolution=resolution, split="all"), work / f"pixels-{resolution}-all.pt", progress)


def get_judge(cache, path: Path, progress: bool = True) -> Judge:
    """The judge at path, or one trained now on the real train-split images (never on generated ones) and saved there."""
    if path.is_file():
        return Judge.load(path)
    train = [i for i, r in enumerate(cache.records) if r.split == "train" and r.subgroup]
    if not train:
        raise LatentDiffError("the dataset has no train-split images with a subgroup label to train the judge on")
    judge = train_judge(cache.images[train], [cache.records[i].subgroup for i in train],
                        [cache.records[i].group or "" for i in train], JudgeConfig(), progress=progress)
    judge.save(path)
    return judge


def evaluate(pipe, cache, judge: Judge, *, steps: int = SAMPLING_DEFAULTS["num_inference_steps"],
             sampler: str = SAMPLING_DEFAULTS["sampler"], guidance: float = SAMPLING_DEFAULTS["guidance_scale"],
             per_prompt: int = 2, seed: int = 0, batch: int = 16, progress: bool = True) -> EvalResult:
    """Generate per_prompt images for every held-out caption and judge them against the real held-out images."""
    held = [i for i, r in enumerate(cache.records) if r.split == "holdout" and r.subgroup in judge.subgroups]
    if len(held) < 2:
        raise LatentDiffError("fewer than two held-out images with a subgroup the judge knows; nothing to evaluate")
    real = cache.images[held].float() / 127.5 - 1  # (H, 3, R, R)
    side = real.shape[-1]
    t0 = time.time()
    gen = []
    for k in range(0, len(held), batch):
        prompts = [cache.records[i].text for i in held[k:k + batch]]
        out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, sampler=sampler, seed=seed + k * per_prompt,
                   num_images=per_prompt, height=side, width=side, progress=False)
        gen += [torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 127.5 - 1 for im in out.images]
        if progress:
            print(f"\rgenerated {len(gen)}/{len(held) * per_prompt}", end="", flush=True)
    if progress:
        print()
    seconds = time.time() - t0
    gen = torch.stack(gen)  # (H·per_prompt, 3, R, R)
    sub_true = torch.tensor([judge.subgroups.index(cache.records[i].subgroup) for i in held])
    grp_true = torch.tensor([judge.groups.index(cache.records[i].group or "") if (cache.records[i].group or "") in judge.groups else -1
                             for i in held])
    f_real, s_real, g_real = judge_images(judge, real)
    f_gen, s_gen, g_gen = judge_images(judge, gen)
    rep = lambda t: t.repeat_interleave(per_prompt)  # noqa: E731 — labels per generated image
    train = [i for i, r in enumerate(cache.records) if r.split == "train"]
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:len(gen)]
    f_train, _, _ = judge_images(judge, cache.images[[train[i] for i in pick]].float() / 127.5 - 1)
    return EvalResult(
        held_out=len(held), images=len(gen),
        acc_subgroup_real=(s_real == sub_true).float().mean().item(), acc_subgroup_generated=(s_gen == rep(sub_true)).float().mean().item(),
        acc_group_real=(g_real == grp_true).float().mean().item(), acc_group_generated=(g_gen == rep(grp_true)).float().mean().item(),
        fd_generated=frechet_distance(f_gen, f_real), fd_real_reference=frechet_distance(f_train, f_real),
        steps=steps, sampler=sampler, guidance=guidance, seconds=seconds)


def main_eval(args) -> int:
    """Run `latentdiff eval` from parsed arguments; print a table, optionally write JSON."""
    from dataclasses import asdict

    from ..checkpoints.loader import resolve_model
    from ..pipelines import LatentDiffusionPipeline
    from ..fileio import write_json

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    pipe = LatentDiffusionPipeline.from_pretrained(resolve_model(args.model), device="cpu", dtype=torch.float32)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    cache = load_real(args.data, side, work)
    judge = get_judge(cache, Path(args.judge) if args.judge else work / f"judge-{side}.safetensors")
    steps, guidance, sampler = pipe.sampling_settings(args.steps, args.guidance, args.sampler)  # the model's defaults
    r = evaluate(pipe, cache, judge, steps=steps, sampler=sampler, guidance=guidance, per_prompt=args.per_prompt, seed=args.seed)
    print(f"held-out emoji        {r.held_out} ({r.images} generated, {r.sampler} {r.steps} steps, guidance {r.guidance})")
    print(f"subgroup accuracy     real {r.acc_subgroup_real:.3f}   generated {r.acc_subgroup_generated:.3f}   (chance {1 / len(judge.subgroups):.3f})")
    print(f"group accuracy        real {r.acc_group_real:.3f}   generated {r.acc_group_generated:.3f}   (chance {1 / len(judge.groups):.3f})")
    print(f"Fréchet distance      generated {r.fd_generated:.2f}   real-vs-real reference {r.fd_real_reference:.2f}")
    if args.out:
        write_json(args.out, {**asdict(r), "model": resolve_model(args.model), "judge_classes": len(judge.subgroups)})
    return 0
