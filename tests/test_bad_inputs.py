"""The README's bad-input promise, table-driven: every command, rc 2, one `error:` line naming the cause, no
traceback, nothing written in the working folder, nothing deleted.

Each case is (command line, distinctive substring of the one error line[, files to write first]). `{M}` is the tiny
diffusers folder, `{F}` the tiny single file, `{PNG}`/`{MASK}` a 64×64 input picture and mask, `{NOKEY}` a folder
whose unet/config.json lacks a required key, `{W}` the working folder. Files named in the third field are written
into the working folder before the snapshot (they must survive too).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentdiff.cli import main

G = ["generate", "a cat", "--model", "{M}", "--out", "out/x.png", "--steps", "2", "--dtype", "fp32"]
I2I = ["img2img", "a cat", "--image", "{PNG}", "--model", "{M}", "--out", "out/x.png", "--steps", "2", "--dtype", "fp32"]
INP = ["inpaint", "a cat", "--image", "{PNG}", "--mask", "{MASK}", "--model", "{M}", "--out", "out/x.png", "--steps", "2",
       "--dtype", "fp32"]
TINY_TRAIN = """output_dir: runs/t
data: {root: imgs, resolution: 32}
vae: {block_out_channels: [8, 16], norm_num_groups: 8}
text_encoder: {hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}
unet: {block_out_channels: [16, 32], attention_levels: [false, true], num_heads: 2, norm_num_groups: 8}
"""
LORA = ["train-lora", "--model", "{M}", "--data", "imgs", "--output-dir", "runs/lora", "--quiet", "--max-steps", "1"]
IMGS = {"imgs/a.png": "PNG", "imgs/a.txt": "a red square"}

CASES = {
    # generate: numbers
    "guidance_nan": (G + ["--guidance", "nan"], "--guidance must be a finite number, got nan"),
    "guidance_inf": (G + ["--guidance", "inf"], "--guidance must be a finite number, got inf"),
    "rescale_nan": (G + ["--guidance-rescale", "nan"], "--guidance-rescale must be a finite number"),
    "rescale_range": (G + ["--guidance-rescale", "2"], "guidance rescale must be in [0, 1]"),
    "lora_weight_nan": (G + ["--lora", "x.safetensors:nan"], "LoRA weight 'nan' is not a finite number"),
    "lora_weight_abc": (G + ["--lora", "x.safetensors:abc"], "LoRA weight 'abc' is not a number"),
    "lora_missing": (G + ["--lora", "missing.safetensors:0.5"], "no such LoRA file"),
    "seed_64bit": (G + ["--seed", str(2**64)], "seed must be an integer in [0, 2^64)"),
    "seed_negative": (G + ["--seed", "-1"], "seed must be an integer in [0, 2^64)"),
    "seed_last_image": (G + ["--seed", str(2**64 - 1), "--num", "2"], "seed + --num - 1 must stay below 2^64"),
    "steps_zero": (G + ["--steps", "0"], "steps must be a positive integer, got 0"),
    "steps_text": (G + ["--steps", "many"], "argument --steps: invalid int value: 'many'"),
    "num_zero": (G + ["--num", "0"], "--num must be positive, got 0"),
    "width_odd": (G + ["--width", "100"], "width must be a positive multiple of 8, got 100"),
    "size_absurd": (G + ["--width", "100000", "--height", "100000"], "100000x100000 needs about"),
    "clip_skip_big": (G + ["--clip-skip", "5"], "--clip-skip 5 is beyond the text encoder's 2 layers"),
    "clip_skip_negative": (G + ["--clip-skip", "-1"], "--clip-skip must be ≥ 0, got -1"),
    "sampler": (G + ["--sampler", "warp9"], "unknown sampler 'warp9'"),
    "device": (G + ["--device", "warp"], "unknown device 'warp'"),
    "dtype": (G + ["--dtype", "fp8"], "unknown dtype 'fp8'"),
    "attention": (G + ["--attention", "warp"], "attention"),
    # generate: paths
    "out_is_folder": (G[:4] + ["--out", "out/dir.png"] + G[6:], "out/dir.png is a folder", {"out/dir.png/keep": "x"}),
    "out_not_png": (G[:4] + ["--out", "out/x.jpg"] + G[6:], "output file must end in .png"),
    "out_no_folder": (G[:4] + ["--out", "nowhere/x.png"] + G[6:], "output folder does not exist"),
    "model_missing": (["generate", "a cat", "--model", "nope", "--out", "out/x.png"], "no such model path"),
    "unet_config_key": (["generate", "a cat", "--model", "{NOKEY}", "--out", "out/x.png"], "lacks the required key 'down_block_types'"),
    "no_prompt": (["generate", "--model", "{M}"], "give a prompt"),
    "replay_missing": (["generate", "--replay", "gone.png"], "no such image: gone.png"),
    "replay_not_ours": (["generate", "--replay", "{PNG}", "--out", "out/x.png"], "carries no generation parameters"),
    # info
    "info_missing": (["info", "nope"], "no such model path"),
    "info_config_key": (["info", "{NOKEY}"], "lacks the required key 'down_block_types'"),
    "info_not_model": (["info", "notes.txt"], "notes.txt", {"notes.txt": "my thesis"}),
    # img2img
    "i2i_strength_nan": (I2I + ["--strength", "nan"], "--strength must be a finite number, got nan"),
    "i2i_strength_zero": (I2I + ["--strength", "0"], "strength must be in (0, 1], got 0"),
    "i2i_guidance_inf": (I2I + ["--guidance=-inf"], "--guidance must be a finite number, got -inf"),
    "i2i_image_missing": (["img2img", "a cat", "--image", "gone.png", "--model", "{M}", "--out", "out/x.png"], "no such image file"),
    "i2i_image_text": (["img2img", "a cat", "--image", "notes.txt", "--model", "{M}", "--out", "out/x.png"],
                       "is not a readable image", {"notes.txt": "my thesis"}),
    "i2i_size_absurd": (I2I + ["--width", "100000", "--height", "100000"], "100000x100000 needs about"),
    "i2i_out_folder": (I2I[:6] + ["--out", "out/dir.png"] + I2I[8:], "is a folder", {"out/dir.png/keep": "x"}),
    # inpaint
    "blur_nan": (INP + ["--mask-blur", "nan"], "--mask-blur must be a finite number, got nan"),
    "blur_huge": (INP + ["--mask-blur", "1e9"], "--mask-blur 1e+09 px is larger than the image (64 px)"),
    "blur_negative": (INP + ["--mask-blur", "-1"], "--mask-blur must be ≥ 0 pixels"),
    "mask_threshold_nan": (INP + ["--mask-threshold", "nan"], "--mask-threshold must be a finite number"),
    "mask_missing": (["inpaint", "a cat", "--image", "{PNG}", "--mask", "gone.png", "--model", "{M}", "--out", "out/x.png"],
                     "no such mask file"),
    "inpaint_strength_inf": (INP + ["--strength", "inf"], "--strength must be a finite number, got inf"),
    # train
    "train_missing": (["train", "nope.yaml"], "config file not found: nope.yaml"),
    "train_max_steps": (["train", "t.yaml"], "train_vae.max_steps must be ≥ 0, got -5",
                        {"t.yaml": TINY_TRAIN + "train_vae: {max_steps: -5}\n", **IMGS}),
    "train_list": (["train", "t.yaml"], "sample_prompts must be a list of strings, got 'a cat'",
                   {"t.yaml": TINY_TRAIN + "sample_prompts: a cat\n", **IMGS}),
    "train_precision": (["train", "t.yaml"], "train_unet.mixed_precision must be one of no, bf16, fp16, got 'fp8'",
                        {"t.yaml": TINY_TRAIN + "train_unet: {mixed_precision: fp8}\n", **IMGS}),
    "train_lr_text": (["train", "t.yaml"], "train_vae.lr must be a number, got 'fast'",
                      {"t.yaml": TINY_TRAIN + "train_vae: {lr: fast}\n", **IMGS}),
    "train_lr_nan": (["train", "t.yaml"], "train_vae.lr must be a finite number > 0, got nan",
                     {"t.yaml": TINY_TRAIN + "train_vae: {lr: .nan}\n", **IMGS}),
    "train_unknown_key": (["train", "t.yaml"], "unknown config key train_vae.epochs",
                          {"t.yaml": TINY_TRAIN + "train_vae: {epochs: 3}\n", **IMGS}),
    "train_no_data": (["train", "t.yaml"], "data.root", {"t.yaml": TINY_TRAIN.replace("root: imgs", "root: gone")}),
    # train-lora
    "lora_max_steps": (LORA + ["--max-steps", "-5"], "max_steps must be at least 1, got -5", IMGS),
    "lora_precision": (LORA + ["--mixed-precision", "fp8"], "mixed_precision must be one of", IMGS),
    "lora_targets": (["train-lora", "l.yaml"], "targets must be a list of strings", {"l.yaml": "data: imgs\ntargets: 5\n", **IMGS}),
    "lora_lr_nan": (LORA + ["--lr", "nan"], "--lr must be a finite number, got nan", IMGS),
    "lora_yaml_lr_nan": (["train-lora", "l.yaml"], "lr must be a finite number > 0, got nan", {"l.yaml": "data: imgs\nlr: .nan\n", **IMGS}),
    "lora_yaml_steps_float": (["train-lora", "l.yaml"], "max_steps must be an integer, got 2.5",
                              {"l.yaml": "data: imgs\nmax_steps: 2.5\n", **IMGS}),
    "lora_data_missing": (LORA[:4] + ["gone"] + LORA[5:], "gone"),
    "lora_resume_nothing": (LORA + ["--resume"], "--resume: no checkpoint in runs/lora/checkpoints", IMGS),  # after caching
    "lora_config_missing": (["train-lora", "gone.yaml"], "no such config file: gone.yaml"),
    # data, eval
    "data_kind": (["data", "flowers", "x"], "argument KIND: invalid choice: 'flowers'"),
    "eval_data_missing": (["eval", "gone", "--model", "{M}"], "no such dataset folder: gone"),
    "eval_per_prompt": (["eval", "imgs", "--model", "{M}", "--per-prompt", "0"], "--per-prompt must be positive, got 0", IMGS),
    "eval_guidance_nan": (["eval", "imgs", "--model", "{M}", "--guidance", "nan"], "--guidance must be a finite number", IMGS),
    # profile, bench
    "profile_missing": (["profile", "gone.yaml"], "no such config file: gone.yaml"),
    "profile_size_absurd": (["profile", "u.yaml", "--size", "100000"], "latent 100000x100000 needs about",
                            {"u.yaml": "unet:\n  block_out_channels: [32, 64]\n  attention_levels: [false, true]\n  norm_num_groups: 8\n"}),
    "profile_batch": (["profile", "u.yaml", "--batch", "0"], "batch, tokens and repeats must be positive",
                      {"u.yaml": "unet:\n  block_out_channels: [32, 64]\n  attention_levels: [false, true]\n  norm_num_groups: 8\n"}),
    "bench_steps": (["bench", "--steps", "0"], "--steps and --latent must be positive"),
    "bench_table_folder": (["bench", "--table", "gone/BENCH.md"], "output folder does not exist: gone"),
    "unknown_command": (["paint", "a cat"], "invalid choice: 'paint'"),
}


def png(path: Path, value: int = 120) -> None:
    """A 64×64 RGB picture with a gradient (a valid input image)."""
    arr = np.full((64, 64, 3), value, np.uint8)
    arr[:, :, 0] = np.arange(64, dtype=np.uint8)[None] * 3
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_folder) -> dict[str, str]:
    """Paths the command lines refer to, outside the working folder (so the snapshot sees only what a command writes)."""
    root = tmp_path_factory.mktemp("inputs")
    png(root / "in.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(root / "mask.png")
    nokey = root / "nokey"
    shutil.copytree(tiny_folder, nokey)
    cfg = json.loads((nokey / "unet" / "config.json").read_text())
    del cfg["down_block_types"]
    (nokey / "unet" / "config.json").write_text(json.dumps(cfg))
    return {"M": str(tiny_folder), "PNG": str(root / "in.png"), "MASK": str(root / "mask.png"), "NOKEY": str(nokey)}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder` with its size and mtime."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def prepare(tmp_path: Path, files: dict[str, str]) -> None:
    """The working folder: an empty out/, a file that must survive, and the case's files."""
    (tmp_path / "out").mkdir()
    (tmp_path / "keep.txt").write_text("precious")
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        png(path) if content == "PNG" else path.write_text(content)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_rc2_and_touches_nothing(name, inputs, tmp_path, monkeypatch, capsys):
    argv, message, *files = CASES[name]
    prepare(tmp_path, files[0] if files else {})
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    try:
        code = main([a.format(W=tmp_path, **inputs) for a in argv])
    except SystemExit as e:  # argparse's own errors exit; ours must still print one line
        code = e.code
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err + out
    assert snapshot(tmp_path) == before


def test_the_corpus_covers_every_command_and_is_large():
    commands = {argv[0] for argv, *_ in CASES.values()}
    assert {"generate", "img2img", "inpaint", "info", "train", "train-lora", "data", "eval", "profile", "bench"} <= commands
    assert len(CASES) >= 40


@pytest.mark.parametrize("argv,message", [
    (["generate", "a cat", "--guidance", "nan", "--out", "x.png"], "--guidance must be a finite number, got nan"),
    (["generate", "a cat", "--seed", str(2**64), "--out", "x.png"], "seed must be an integer in [0, 2^64)"),
    (["inpaint", "a cat", "--image", "in.png", "--mask", "in.png", "--mask-blur", "inf"], "--mask-blur must be a finite number"),
])
def test_bad_input_in_a_real_process(argv, message, tmp_path):
    """The console entry point: the same one line and exit 2 from a fresh interpreter (no pytest capture)."""
    png(tmp_path / "in.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    before = snapshot(tmp_path)
    r = subprocess.run([sys.executable, "-m", "latentdiff.cli", *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert snapshot(tmp_path) == before


def test_a_failed_run_removes_only_the_cache_folders_it_made(tmp_path):
    """Caches and logs of a run that failed go; a folder holding weights, or one that was there before, stays."""
    from latentdiff.cli.common import removed_on_failure

    made, weights, old = tmp_path / "runs" / "a", tmp_path / "b", tmp_path / "old"
    old.mkdir()
    (old / "thesis.txt").write_text("mine")
    with pytest.raises(RuntimeError), removed_on_failure(str(made), str(weights), str(old)):
        for folder in (made, weights, old):
            (folder / "cache").mkdir(parents=True)
            (folder / "cache" / "latents.safetensors").write_bytes(b"x")
            (folder / "log.csv").write_text("step,loss\n")
        (weights / "lora.safetensors").write_bytes(b"w")
        raise RuntimeError("loss became nan")
    assert not (tmp_path / "runs").exists()  # the outermost folder the run created
    assert (weights / "lora.safetensors").is_file() and (old / "thesis.txt").read_text() == "mine" and (old / "cache").is_dir()
