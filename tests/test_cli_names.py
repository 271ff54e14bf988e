"""One word per setting across the CLI, Python and recipes (README: Names): the short flags and the Python argument
names parse to the same values, retired spellings print one `note:` line, recipes take `dtype` for `mixed_precision`."""

from __future__ import annotations

import argparse
import json

import pytest

from latentdiff.cli import build_parser, main
from latentdiff.errors import LatentDiffError

DRAW = {"generate": ["p"], "img2img": ["p", "--image", "i.png"], "inpaint": ["p", "--image", "i.png", "--mask", "m.png"]}
SHORT = ["--steps", "7", "--guidance", "3.5", "--num", "2", "--negative", "blurry"]
LONG = ["--num-inference-steps", "7", "--guidance-scale", "3.5", "--num-images", "2", "--negative-prompt", "blurry"]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("command", sorted(DRAW))
def test_python_argument_names_are_permanent_flag_aliases(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # help lines unwrapped
    p = build_parser()
    short = vars(p.parse_args([command, *DRAW[command], *SHORT]))
    long = vars(p.parse_args([command, *DRAW[command], *LONG]))
    assert short == long
    assert (short["steps"], short["guidance"], short["num"], short["negative"]) == (7, 3.5, 2, "blurry")
    assert capsys.readouterr().err == ""  # real aliases, no notice
    help_text = subparsers()[command].format_help()
    for alias in ("--num-inference-steps", "--guidance-scale", "--num-images", "--negative-prompt"):
        assert f"also spelt {alias}" in help_text
    with pytest.raises(SystemExit) as exit_:  # an error names the spelling typed
        main([command, *DRAW[command], "--num-inference-steps", "many"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("error: argument --num-inference-steps: invalid int value: 'many'")


def test_eval_and_bench_take_the_same_words(capsys):
    p = build_parser()
    a = p.parse_args(["eval", "data", "--steps", "3", "--guidance", "2"])
    b = p.parse_args(["eval", "data", "--num-inference-steps", "3", "--guidance-scale", "2"])
    assert vars(a) == vars(b) and (a.steps, a.guidance) == (3, 2.0)
    assert p.parse_args(["bench", "--num-inference-steps", "4"]).steps == p.parse_args(["bench", "--steps", "4"]).steps == 4
    assert capsys.readouterr().err == ""


def test_device_and_dtype_default_to_auto_except_profile():
    """profile keeps cpu/fp32 on purpose (comparable latency tables) and says so in its help."""
    seen = set()
    for name, sub in subparsers().items():
        defaults = {a.dest: a.default for a in sub._actions if a.dest in ("device", "dtype")}
        if not defaults:
            continue
        seen.add(name)
        if name == "profile":
            assert defaults == {"device": "cpu", "dtype": "fp32"}
            assert "not auto as elsewhere" in " ".join(sub.format_help().split())
        else:
            assert set(defaults.values()) == {"auto"}, name
    assert {"generate", "img2img", "inpaint", "serve", "bench", "profile"} <= seen


def test_profile_json_is_retired_for_out_with_one_note(tmp_path, capsys):
    (tmp_path / "u.yaml").write_text("unet: {block_out_channels: [16, 32], layers_per_block: 1, attention_levels: [false, true],"
                                     " num_heads: 2, cross_attention_dim: 8, norm_num_groups: 8, sample_size: 8}\n")
    runs = {}
    for flag in ("--out", "--json"):
        path = tmp_path / f"{flag[2:]}.json"
        assert main(["profile", str(tmp_path / "u.yaml"), "--flops-only", "--tokens", "5", flag, str(path)]) == 0
        runs[flag] = (json.loads(path.read_text()), capsys.readouterr().err.splitlines())
    assert runs["--out"][0]["rows"] == runs["--json"][0]["rows"]
    assert runs["--out"][1] == []
    assert runs["--json"][1] == ["note: --json is now --out; the old spelling goes away in the next release"]


def test_a_retired_flag_given_twice_is_noted_once(capsys):
    p = build_parser()
    for _ in range(2):  # each command line gets its note
        assert p.parse_args(["eval", "d", "--json", "a.json", "--json", "b.json"]).out == "b.json"
        assert capsys.readouterr().err.count("note: --json is now --out") == 1


def test_train_lora_dtype_flag_is_mixed_precision(capsys):
    p = build_parser()
    a = p.parse_args(["train-lora", "--dtype", "bf16"])
    b = p.parse_args(["train-lora", "--mixed-precision", "bf16"])
    assert vars(a) == vars(b) and a.set_mixed_precision == "bf16"
    assert "also spelt --dtype" in subparsers()["train-lora"].format_help()
    assert capsys.readouterr().err == ""


def test_recipes_take_dtype_for_mixed_precision(tmp_path):
    from latentdiff.training.config import TrainConfig, build
    from latentdiff.training.lora_config import load_config

    for word, stored in (("fp32", "no"), ("no", "no"), ("bf16", "bf16")):
        new = build(TrainConfig, {"train_unet": {"dtype": word}})
        old = build(TrainConfig, {"train_unet": {"mixed_precision": word}})
        assert new == old and new.train_unet.mixed_precision == stored
    recipe = tmp_path / "lora.yaml"
    for key in ("dtype", "mixed_precision"):
        recipe.write_text(f"data: imgs\n{key}: bf16\n")
        assert load_config(recipe) == load_config(None, {"data": "imgs", "mixed_precision": "bf16"})
    recipe.write_text("data: imgs\ndtype: fp16\n")
    assert load_config(recipe, {"mixed_precision": "fp32"}).mixed_precision == "no"  # the flag wins over `dtype:`


def test_recipe_alias_errors_name_the_key_as_written():
    from latentdiff.training.config import TrainConfig, build
    from latentdiff.training.lora_config import config_from

    with pytest.raises(LatentDiffError, match=r"^train_unet\.dtype must be one of no, bf16, fp16, got 'fp8'$"):
        build(TrainConfig, {"train_unet": {"dtype": "fp8"}})
    with pytest.raises(LatentDiffError, match=r"^train_vae\.mixed_precision and train_vae\.dtype are one setting; give one of them$"):
        build(TrainConfig, {"train_vae": {"mixed_precision": "bf16", "dtype": "bf16"}})
    with pytest.raises(LatentDiffError, match=r"^dtype and mixed_precision are one setting"):
        config_from({"data": "x", "dtype": "bf16", "mixed_precision": "bf16"})
    with pytest.raises(LatentDiffError, match=r"^unknown config key train_vae\.precision$"):
        build(TrainConfig, {"train_vae": {"precision": "bf16"}})
