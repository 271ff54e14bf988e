"""Profile the architecture-lab presets (timed) and SD1.5 with each down/up-sampling variant (counted), for ARCHITECTURES.md.

Writes next to this file: profile-lab.{json,md,png} (the configs/unet-*.yaml + configs/dit-base.yaml presets at their
32×32 latents, CPU fp32, configs timed in turns) and profile-sd15.{json,md} (SD1.5's U-Net at 64×64 latents with each
operator swapped in: parameters and FLOPs on the meta device, no weights made).

Usage: python benchmarks/architectures/profile_archs.py [--threads 1] [--repeats 15] [--batch 1]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent


def sd15_variants() -> list[tuple[str, object, str]]:
    """SD1.5's U-Net, then one operator at a time swapped, and the classic / lossless pairs."""
    from latentdiff.profiling import load_arch_config

    _, sd, _ = load_arch_config(REPO / "latentdiff" / "checkpoints" / "presets" / "sd15.yaml")
    swaps = [("sd15", {}), ("sd15 down=avgpool", dict(downsample="avgpool")), ("sd15 down=maxpool", dict(downsample="maxpool")),
             ("sd15 down=blurpool", dict(downsample="blurpool")), ("sd15 down=unshuffle", dict(downsample="unshuffle")),
             ("sd15 up=bilinear_conv", dict(upsample="bilinear_conv")), ("sd15 up=transposed", dict(upsample="transposed")),
             ("sd15 up=shuffle", dict(upsample="shuffle")),
             ("sd15 maxpool+transposed", dict(downsample="maxpool", upsample="transposed")),
             ("sd15 linear attn @64²", dict(attention_types=("linear", "full", "full", "none"))),
             ("sd15 no attn @64²", dict(attention_levels=(False, True, True, False))),
             ("sd15 self-cond", dict(self_condition=True)), ("sd15 no skips", dict(skip_connections=False))]
    out = []
    for name, change in swaps:
        out.append((name, replace(sd, **change), ", ".join(f"{k}={v}" for k, v in change.items()) or "SD1.5"))
    return out


def main(argv: list[str] | None = None) -> int:
    from latentdiff.profiling import (ProfileSettings, latency_chart, load_arch_config, profile_many, to_markdown,
                                      write_json, write_text_atomic)

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the 2 cores are shared with training jobs)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)

    presets = sorted((REPO / "configs").glob("unet-*.yaml")) + [REPO / "configs" / "dit-base.yaml"]
    lab = ProfileSettings(batch=args.batch, warmup=args.warmup, repeats=args.repeats)
    rows = profile_many([load_arch_config(path) for path in presets], lab, progress=True)
    table = to_markdown(rows)
    print(table)
    write_text_atomic(out / "profile-lab.md", table)
    write_json(rows, lab, out / "profile-lab.json")
    latency_chart(rows, out / "profile-lab.png")

    counted = ProfileSettings(batch=1, size=64, tokens=77, latency=False)
    rows = profile_many(sd15_variants(), counted, progress=True)
    table = to_markdown(rows)
    print(table)
    write_text_atomic(out / "profile-sd15.md", table)
    write_json(rows, counted, out / "profile-sd15.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
