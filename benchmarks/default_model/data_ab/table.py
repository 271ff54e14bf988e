"""The §8 table from the eval-*.json files here: accuracies with one binomial standard error, FD, and B − A."""

from __future__ import annotations

import json
import math
from pathlib import Path

HERE = Path(__file__).parent
ARMS = [("3d-300", "Fluent 3D only, step 300, EMA"), ("mix-300", "+ Noto + Twemoji, step 300, EMA"),
        ("3d-300raw", "Fluent 3D only, step 300, raw weights"), ("mix-300raw", "+ Noto + Twemoji, step 300, raw weights"),
        ("3d", "Fluent 3D only, step 600, EMA"), ("mix", "+ Noto + Twemoji, step 600, EMA")]


def se(p: float, n: int) -> float:
    """One binomial standard error of an accuracy p over n images."""
    return math.sqrt(p * (1 - p) / n)


def main() -> None:
    """Print the markdown rows for every arm whose JSON exists, then the differences B − A."""
    runs = {k: json.loads((HERE / f"eval-{k}.json").read_text()) for k, _ in ARMS if (HERE / f"eval-{k}.json").is_file()}
    print("| arm | subgroup acc | group acc | Fréchet distance |\n|---|---:|---:|---:|")
    for key, name in ARMS:
        if key in runs:
            r = runs[key]
            n = r["images"]
            print(f"| {name} | {r['acc_subgroup_generated']:.3f} ± {se(r['acc_subgroup_generated'], n):.3f} | "
                  f"{r['acc_group_generated']:.3f} ± {se(r['acc_group_generated'], n):.3f} | {r['fd_generated']:.1f} |")
    for a, b in (("3d-300", "mix-300"), ("3d-300raw", "mix-300raw"), ("3d", "mix")):
        if a in runs and b in runs:
            ra, rb = runs[a], runs[b]
            n = ra["images"]
            for field in ("acc_subgroup_generated", "acc_group_generated"):
                d = rb[field] - ra[field]
                s = math.hypot(se(ra[field], n), se(rb[field], n))
                print(f"{b} − {a}: {field} {d:+.3f} ({d / s:+.1f} SE)")
            print(f"{b} − {a}: FD {rb['fd_generated'] - ra['fd_generated']:+.1f}")
    real = next(iter(runs.values()))
    print(f"real held-out: subgroup {real['acc_subgroup_real']:.3f}, group {real['acc_group_real']:.3f}, "
          f"real-vs-real FD {real['fd_real_reference']:.1f}")


if __name__ == "__main__":
    main()
