"""Names that agree between the CLI, Python and configs (issue 14): new spellings, and the old ones for one release
with a one-line note."""

from __future__ import annotations

import pytest

from latentdiff.cli import build_parser


def test_old_flag_spellings_still_parse_with_a_note(capsys):
    p = build_parser()
    a = p.parse_args(["eval", "data", "--json", "r.json", "--work", "w"])
    assert (a.out, a.work_dir) == ("r.json", "w")
    assert capsys.readouterr().err.splitlines() == [
        "note: --json is now --out; the old spelling goes away in the next release",
        "note: --work is now --work-dir; the old spelling goes away in the next release"]
    a = p.parse_args(["eval", "data", "--out", "r.json", "--work-dir", "w"])
    assert (a.out, a.work_dir) == ("r.json", "w") and capsys.readouterr().err == ""
    a = p.parse_args(["train", "t.yaml", "--out", "m"])
    assert a.export_dir == "m" and "note: --out is now --export-dir" in capsys.readouterr().err
    a = p.parse_args(["train", "t.yaml", "--export-dir", "m", "--output-dir", "runs/x", "--resume"])
    assert (a.export_dir, a.output_dir, a.resume) == ("m", "runs/x", "latest")
    a = p.parse_args(["train-lora", "--output-dir", "runs/l", "--resume", "runs/l/checkpoints/step-000010"])
    assert (a.set_output_dir, a.resume) == ("runs/l", "runs/l/checkpoints/step-000010")


def test_mixed_precision_takes_the_dtype_word_fp32(tmp_path):
    """`--dtype fp32` at inference, `mixed_precision: fp32` in training recipes (the old `no` still works)."""
    from latentdiff.training.config import StageConfig, build
    from latentdiff.training.lora_config import load_config

    assert build(StageConfig, {"mixed_precision": "fp32"}).mixed_precision == "no"
    assert build(StageConfig, {"mixed_precision": "no"}).mixed_precision == "no"
    assert load_config(None, {"data": "x", "mixed_precision": "fp32"}).mixed_precision == "no"


def test_train_output_dir_flag_replaces_the_recipes(tmp_path):
    from test_train import make_shapes_dataset, write_config

    from latentdiff.training.config import load_config

    path = write_config(tmp_path / "t.yaml", make_shapes_dataset(tmp_path / "shapes"), tmp_path / "a")
    assert load_config(path).output_dir == str(tmp_path / "a")
    assert load_config(path, output_dir=str(tmp_path / "b")).output_dir == str(tmp_path / "b")
    with pytest.raises(Exception):
        load_config(tmp_path / "gone.yaml", output_dir="x")
