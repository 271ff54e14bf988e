"""`latentdiff bench` runs from an installed wheel: the harness is package code; only the table needs a checkout."""

from __future__ import annotations

import json

import pytest

from latentdiff.cli import main


@pytest.mark.slow
def test_bench_runs_without_the_source_trees_benchmarks_folder(tmp_path, monkeypatch, capsys):
    import latentdiff.cli.bench as bench

    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path / "no-checkout")  # as in a wheel install: no benchmarks/ beside it
    out = tmp_path / "r.json"
    assert main(["bench", "--layout", "tiny", "--device", "cpu", "--variants", "ours-fp32", "--latent", "8", "--size", "64",
                 "--steps", "2", "--step-repeats", "1", "--decode-repeats", "1", "--no-memory", "--work-dir", str(tmp_path),
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {row["name"]: row for row in result["variants"]}
    assert set(rows) == {"ours-fp32", "diffusers-fp32"}  # the reference is added beside ours
    assert rows["ours-fp32"]["unet_step"]["median_s"] > 0
    capsys.readouterr()
    assert main(["bench", "--table", str(tmp_path / "B.md")]) == 2
    assert capsys.readouterr().err.strip().endswith("writing the BENCHMARKS.md table needs a source checkout (git clone, pip install -e .)")
