"""`--control` end to end: generate/img2img/inpaint with ControlNets, the PNG's sd-webui-controlnet units, replay with
hash-checked control images, and one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers import run
from latentdiff.checkpoints.controlnet import save_controlnet_single_file
from latentdiff.cli.control import MODULES
from latentdiff.pipelines import control_images
from latentdiff.pipelines.control import ControlUnit
from latentdiff.pipelines.png_metadata import parse_a1111
from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline
from test_controlnet_model import random_controlnet

ARGS = ["--steps", "3", "--seed", "11", "--dtype", "fp32", "--guidance", "5", "--sampler", "euler"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny SD1 ControlNet in the A1111 fp16 layout and two control pictures (a box outline, noise)."""
    root = tmp_path_factory.mktemp("control")
    net = save_controlnet_single_file(random_controlnet("sd1", seed=21), root / "control_tiny_canny.safetensors")
    box = np.zeros((64, 64, 3), np.uint8)
    box[16:48, 12:52] = 255
    Image.fromarray(box).save(root / "box.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "noise.png")
    return root, net


def test_generate_with_two_controlnets_matches_the_api_and_replays(capsys, tmp_path, tiny_folder, files):
    root, net = files
    out = tmp_path / "a.png"
    code, _, err = run(capsys, "generate", "a cat", "--model", tiny_folder, "--out", out, *ARGS,
                       "--control", f"{net}:{root / 'box.png'}:0.9", "--control", f"{net}:{root / 'noise.png'}:1.3:0.3:1",
                       "--control-module", "canny", "--control-module", "none", "--control-resize", "fill")
    assert code == 0, err
    text = Image.open(out).text
    _, _, kv = parse_a1111(text["parameters"])
    assert kv["ControlNet 0"].startswith("Module: canny, Model: control_tiny_canny [")
    assert ", Weight: 0.9, Resize Mode: Resize and Fill, Processor Res: 64, Threshold A: 100, Threshold B: 200, " \
           "Guidance Start: 0, Guidance End: 1, Pixel Perfect: True, Control Mode: Balanced" in kv["ControlNet 0"]
    assert "Module: none" in kv["ControlNet 1"] and "Guidance Start: 0.3" in kv["ControlNet 1"]
    units = json.loads(text["latentdiff"])["controls"]
    assert [u["module"] for u in units] == ["canny", "none"] and units[1]["weight"] == 1.3

    pipe = LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")  # the API draws the same pixels
    api = pipe("a cat", num_inference_steps=3, seed=11, guidance_scale=5, sampler="euler", progress=False,
               controls=[ControlUnit(net, root / "box.png", 0.9, module="canny", resize_mode="fill"),
                         ControlUnit(net, root / "noise.png", 1.3, 0.3, 1.0, resize_mode="fill")]).images[0]
    assert np.array_equal(np.asarray(api), np.asarray(Image.open(out).convert("RGB")))

    again = tmp_path / "b.png"
    assert run(capsys, "generate", "--replay", out, "--out", again)[0] == 0  # files found where the PNG recorded them
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))


def test_replay_checks_the_control_images(capsys, tmp_path, tiny_folder, files):
    root, net = files
    out = tmp_path / "a.png"
    assert run(capsys, "generate", "x", "--model", tiny_folder, "--out", out, *ARGS, "--control", f"{net}:{root / 'box.png'}")[0] == 0
    code, _, err = run(capsys, "generate", "--replay", out, "--out", tmp_path / "b.png", "--control", f"{net}:{root / 'noise.png'}")
    assert code == 2 and "control image" in err and "was drawn from one with" in err and "Traceback" not in err
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(out, moved / "a.png")
    code, _, err = run(capsys, "generate", "--replay", moved / "a.png", "--out", tmp_path / "c.png",
                       "--control", f"{net}:{root / 'box.png'}")
    assert code == 0, err
    assert not (tmp_path / "b.png").exists()


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_img2img_and_inpaint_take_controls(capsys, tmp_path, tiny_folder, files, mode):
    root, net = files
    extra = ["--mask", root / "box.png"] if mode == "inpaint" else ["--strength", "0.6"]
    out = tmp_path / f"{mode}.png"
    code, _, err = run(capsys, mode, "a cat", "--image", root / "noise.png", *extra, "--model", tiny_folder, "--out", out,
                       *ARGS, "--control", f"{net}:{root / 'box.png'}:1.0:0:0.5", "--control-guess")
    assert code == 0, err
    _, _, kv = parse_a1111(Image.open(out).text["parameters"])
    assert "Guidance End: 0.5" in kv["ControlNet 0"] and "Control Mode: ControlNet is more important" in kv["ControlNet 0"]


@pytest.mark.parametrize("argv,message", [
    (["--control", "cn.safetensors"], "give PATH:IMAGE"),
    (["--control", "cn:img.png:x"], "must be numbers"),
    (["--control", "{net}:missing.png"], "no such control image: missing.png"),
    (["--control", "{net}:{box}:1:0.8:0.2"], "0 ≤ start < end ≤ 1"),
    (["--control-module", "canny"], "--control-module needs a --control"),
    (["--control", "{net}:{box}", "--control", "{net}:{box}", "--control-resize", "just", "--control-resize", "fill",
      "--control-resize", "crop"], "3 --control-resize for 2 --control"),
])
def test_bad_control_flags_are_one_line(capsys, tmp_path, tiny_folder, files, argv, message):
    root, net = files
    argv = [a.format(net=net, box=root / "box.png") for a in argv]
    out = tmp_path / "x.png"
    try:
        code, _, err = run(capsys, "generate", "x", "--model", tiny_folder, "--out", out, *ARGS, *argv)
    except SystemExit as e:  # argparse rejects a malformed flag itself
        code, err = e.code, capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_cli_modules_are_the_library_ones():
    assert MODULES == control_images.MODULES
