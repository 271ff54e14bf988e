"""SD1.5 side by side with diffusers: `python benchmarks/bench_sd15.py --out benchmarks/results/cpu-sd15.json`.

Same flags as `latentdiff bench` (see latentdiff/bench/harness.py); writes raw JSON and regenerates BENCHMARKS.md when
the JSON goes into benchmarks/results/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_table  # noqa: E402

from latentdiff.bench import harness  # noqa: E402
from latentdiff.cli.bench import add_bench_arguments  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_arguments(p)
    a = p.parse_args(argv)
    harness.run(harness.settings_from_args(a), a.out)
    if a.out and Path(a.out).resolve().parent == make_table.RESULTS.resolve():
        print(make_table.write_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
