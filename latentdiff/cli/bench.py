"""`latentdiff bench`: the side-by-side benchmark against diffusers (latentdiff.bench.harness) from the command line.

The harness ships in the package, so it runs from an installed wheel; regenerating BENCHMARKS.md (`--table`, or
`--out` into benchmarks/results/) uses benchmarks/make_table.py and needs a source checkout."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from ..bench.variants import DEFAULT_WORK_DIR
from ..errors import LatentDiffError
from .common import add_flag

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"  # the source tree's benchmarks/ folder


def load_bench_module(name: str):
    """Import benchmarks/<name>.py from the source tree; one-line error where it is not there (wheel installs)."""
    path = BENCH_DIR / f"{name}.py"
    if not path.is_file():
        raise LatentDiffError(f"{path} not found: writing the BENCHMARKS.md table needs a source checkout (git clone, pip install -e .)")
    key = f"latentdiff_benchmarks_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The harness's flags; defaults are BenchSettings' (tests/test_fast.py checks they agree)."""
    p.add_argument("--layout", default="sd15", choices=["sd15", "tiny"], help="sd15: the real sizes; tiny: a smoke run")
    p.add_argument("--model", default="", help="time this diffusers folder instead of random weights ('default': the embedded model)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--variants", default="", help="comma-separated variant names (default: the device's list; see harness.VARIANTS)")
    p.add_argument("--latent", type=int, default=64, help="latent side of the U-Net CFG step and VAE decode (default 64 = 512²)")
    p.add_argument("--size", type=int, default=512, help="end-to-end image side in pixels (default 512)")
    add_flag(p, "--steps", "--num-inference-steps", type=int, default=25, metavar="N",
             help="end-to-end sampler steps (default 25; say so when you reduce it)")
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--step-warmup", type=int, default=1, help="untimed U-Net steps (default 1)")
    p.add_argument("--step-repeats", type=int, default=5, help="timed U-Net CFG steps, median reported (default 5)")
    p.add_argument("--decode-repeats", type=int, default=2, help="timed VAE decodes (default 2)")
    p.add_argument("--e2e-repeats", type=int, default=1, help="timed images (default 1)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--tiling-sizes", default="", help="comma-separated image sides for the VAE tiling probe (e.g. 1536)")
    p.add_argument("--tiles", default="1024,512", help="tile sides tried by the VAE tiling probe (default 1024,512)")
    p.add_argument("--pairs", default="", help="comma-separated A:B variant pairs: U-Net steps timed in alternation")
    p.add_argument("--pair-rounds", type=int, default=4, help="alternations per pair (default 4)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR), help="where the random-weight model folder is cached (GBs)")
    p.add_argument("--label", default="", help="what this run is, written into the JSON and the table")
    p.add_argument("--out", help="raw JSON path (e.g. benchmarks/results/cpu-sd15.json)")


def add_bench_parser(sub) -> None:
    """Register the `bench` subcommand."""
    p = sub.add_parser("bench", help="time our pipeline against diffusers' on the same random SD1.5 weights",
                       description="Side-by-side benchmark: U-Net CFG step, VAE decode, end-to-end image, peak memory; "
                                   "raw JSON, then the BENCHMARKS.md table. Slow on CPU (minutes per variant).")
    add_bench_arguments(p)
    p.add_argument("--table", nargs="?", const="BENCHMARKS.md", default=None, metavar="PATH",
                   help="only write the results table (from the source tree's benchmarks/results/*.json) to PATH "
                        "(default ./BENCHMARKS.md; the existing file's hand-written parts are kept)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    if args.table is not None:
        table = Path(args.table)
        if table.is_dir():
            raise LatentDiffError(f"--table {table} is a folder; give a file path such as {table / 'BENCHMARKS.md'}")
        if not table.parent.is_dir():
            raise LatentDiffError(f"output folder does not exist: {table.parent}")
        print(load_bench_module("make_table").write_table(table))
        return 0
    if args.steps <= 0 or args.size <= 0 or args.size % 8 or args.latent <= 0:
        raise LatentDiffError("--steps and --latent must be positive and --size a positive multiple of 8")
    if args.model:
        from ..checkpoints.loader import resolve_model

        args.model = resolve_model(args.model)
    from ..bench import harness

    settings = harness.settings_from_args(args)
    try:
        result = harness.run(settings, args.out)
    except ValueError as e:
        raise LatentDiffError(str(e)) from None
    for row in result["variants"]:
        step = row.get("unet_step", {}).get("median_s")
        e2e = row.get("e2e", {}).get("median_s")
        print(f"{row['name']:30s} U-Net CFG step {'-' if step is None else f'{step:.3f} s'}  "
              f"image {'-' if e2e is None else f'{e2e:.2f} s'}  {row.get('error', '')}".rstrip())
    if args.out:
        print(f"raw results: {args.out}")
        if Path(args.out).resolve().parent == (BENCH_DIR / "results").resolve():  # only in a source checkout
            print(load_bench_module("make_table").write_table())
    return 0
