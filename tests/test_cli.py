"""The `latentdiff` command end to end on tiny models: PNGs with parameters, replay, and one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run
from latentdiff.hashes import model_hash
from latentdiff.pipelines.png_metadata import read_png_params
from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline

ARGS = ["--steps", "3", "--seed", "11", "--dtype", "fp32", "--guidance", "5"]


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int16)


def test_folder_and_single_file_draw_the_same_image_through_cli_and_api(capsys, tmp_path, tiny_folder, tiny_single_file):
    a, b = tmp_path / "folder.png", tmp_path / "file.png"
    assert run(capsys, "generate", "a cat in a spacesuit", "--model", tiny_folder, "--out", a, *ARGS)[0] == 0
    assert run(capsys, "generate", "a cat in a spacesuit", "--model", tiny_single_file, "--out", b, *ARGS)[0] == 0
    api = LatentDiffusionPipeline.from_pretrained(tiny_single_file, dtype="fp32")
    c = api("a cat in a spacesuit", num_inference_steps=3, seed=11, guidance_scale=5, progress=False).images[0]
    assert np.array_equal(pixels(a), pixels(b))
    assert np.array_equal(pixels(a), np.asarray(c).astype(np.int16))
    assert pixels(a).std() > 5


def test_png_carries_parameters_and_replays(capsys, tmp_path, tiny_folder):
    out = tmp_path / "cat.png"
    code, stdout, _ = run(capsys, "generate", "a cat", "--negative", "dog", "--model", tiny_folder, "--out", out,
                          "--sampler", "euler_a", "--width", "48", "--height", "64", *ARGS)
    assert code == 0 and "cat.png" in stdout
    with Image.open(out) as im:
        text = im.info["parameters"]
        meta = json.loads(im.info["latentdiff"])
        assert im.size == (48, 64)
    assert text.splitlines() == ["a cat", "Negative prompt: dog",
                                 f"Steps: 3, Sampler: Euler a, CFG scale: 5, Seed: 11, Size: 48x64, RNG: CPU, "
                                 f"Model hash: {model_hash(tiny_folder)}, Model: tiny-sd1"]
    assert meta["sampler"] == "euler_a" and meta["seed"] == 11 and meta["model"] == str(tiny_folder)
    again = tmp_path / "again.png"
    assert run(capsys, "generate", "--replay", out, "--out", again, "--dtype", "fp32")[0] == 0
    assert np.array_equal(pixels(out), pixels(again))
    assert read_png_params(again).prompt == "a cat"


def test_numbered_outputs_and_several_images(capsys, tmp_path, tiny_folder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "00004.png").write_bytes(b"")
    assert run(capsys, "generate", "", "--model", tiny_folder, "--num", "2", *ARGS)[0] == 0  # empty prompt: unconditional
    assert (tmp_path / "00005.png").is_file() and (tmp_path / "00006.png").is_file()
    assert read_png_params(tmp_path / "00006.png").seed == 12


def test_info(capsys, tiny_single_file):
    code, out, _ = run(capsys, "info", tiny_single_file)
    assert code == 0
    assert "layout           SD1" in out and "prediction type  epsilon" in out and "channels [32, 64]" in out


def truncated(tmp_path, tiny_single_file):
    data = tiny_single_file.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    return bad


@pytest.mark.parametrize("case,message", [
    ("missing", "no such model path"),
    ("not_a_model", "is not a model folder (no model_index.json)"),
    ("truncated", "is not a valid safetensors file"),
    ("unknown_arch", "Stable Diffusion U-Net (model.diffusion_model.*) among 1 tensors; top-level names: foo"),
    ("pickle", "--allow-pickle"),
    ("width", "width must be a positive multiple of 8, got 100"),
    ("height", "height must be a positive multiple of 8, got -8"),
    ("steps", "steps must be a positive integer, got 0"),
    ("sampler", "unknown sampler 'warp9'"),
    ("unwritable", "output folder does not exist"),
    ("not_png", "output file must end in .png"),
])
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, tiny_folder, tiny_single_file, case, message):
    model, extra = tiny_folder, []
    if case == "missing":
        model = tmp_path / "nope"
    elif case == "not_a_model":
        model = tmp_path / "empty"
        model.mkdir()
    elif case == "truncated":
        model = truncated(tmp_path, tiny_single_file)
    elif case == "unknown_arch":
        model = tmp_path / "other.safetensors"
        from safetensors.torch import save_file
        save_file({"foo.weight": torch.zeros(2)}, str(model))
    elif case == "pickle":
        model = tmp_path / "model.ckpt"
        torch.save({"state_dict": {}}, model)
    elif case == "width":
        extra = ["--width", "100"]
    elif case == "height":
        extra = ["--height", "-8"]
    elif case == "steps":
        extra = ["--steps", "0"]
    elif case == "sampler":
        extra = ["--sampler", "warp9"]
    out = tmp_path / "out" / "x.png" if case == "unwritable" else tmp_path / ("x.jpg" if case == "not_png" else "x.png")
    code, stdout, err = run(capsys, "generate", "a cat", "--model", model, "--out", out, *ARGS, *extra)
    assert code == 2
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not out.exists() and not list(tmp_path.glob("*.png"))


def test_unknown_architecture_message_names_what_was_found(capsys, tmp_path):
    from safetensors.torch import save_file
    model = tmp_path / "xl.safetensors"
    save_file({"conditioner.embedders.0.weight": torch.zeros(2), "model.diffusion_model.x": torch.zeros(1)}, str(model))
    code, _, err = run(capsys, "info", model)
    assert code == 2 and "SDXL" in err


def test_model_folder_generation_config_sets_the_defaults(capsys, tmp_path, tiny_sd1):
    """A folder's generation_config.json replaces 25 steps / CFG 7.5 / dpmpp_2m; flags and API arguments still win."""
    from latentdiff.checkpoints import load_components, save_diffusers_folder

    from dataclasses import replace

    defaults = {"num_inference_steps": 2, "guidance_scale": 3.0, "sampler": "Euler a"}  # A1111's name is accepted
    folder = save_diffusers_folder(replace(tiny_sd1, generation=defaults), tmp_path / "model")  # the fixture stays as it is
    assert json.loads((folder / "generation_config.json").read_text())["sampler"] == "Euler a"
    assert load_components(folder).generation == {"num_inference_steps": 2, "guidance_scale": 3.0, "sampler": "euler_a"}
    out = tmp_path / "a.png"
    assert run(capsys, "generate", "a cat", "--model", folder, "--out", out, "--seed", "1", "--dtype", "fp32")[0] == 0
    assert read_png_params(out).to_a1111().splitlines()[1].startswith("Steps: 2, Sampler: Euler a, CFG scale: 3, Seed: 1")
    assert run(capsys, "generate", "a cat", "--model", folder, "--out", out, "--steps", "3", "--guidance", "5",
               "--sampler", "ddim", "--seed", "1", "--dtype", "fp32")[0] == 0
    assert read_png_params(out).to_a1111().splitlines()[1].startswith("Steps: 3, Sampler: DDIM, CFG scale: 5")
    pipe = LatentDiffusionPipeline.from_pretrained(folder, dtype="fp32")
    assert pipe.sampling_settings(None, None, None) == (2, 3.0, "euler_a")
    p = pipe("a cat", seed=1, guidance_scale=1.0, progress=False).params[0]
    assert (p.steps, p.guidance_scale, p.sampler) == (2, 1.0, "euler_a")


@pytest.mark.parametrize("content, message", [
    ('{"steps": 10}', "unknown key 'steps' (known: num_inference_steps, guidance_scale, sampler)"),
    ('{"num_inference_steps": 0}', "num_inference_steps has a bad value 0"),
    ('{"guidance_scale": "high"}', "guidance_scale has a bad value 'high'"),
    ('{"sampler": "warp9"}', "unknown sampler 'warp9'"),
    ('[10]', "expected a JSON object"),
    ('{"num_inference_steps": 10', "is not valid JSON"),
])
def test_bad_generation_config_is_one_line(capsys, tmp_path, tiny_folder, content, message):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    (folder / "generation_config.json").write_text(content)
    out = tmp_path / "x.png"
    code, _, err = run(capsys, "generate", "a cat", "--model", folder, "--out", out, "--seed", "1")
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not out.exists()


def test_info_on_the_embedded_model_shows_native_size_and_sampling_defaults(capsys):
    for argv in (("info",), ("info", "default")):
        code, out, _ = run(capsys, *argv)
        assert code == 0
        lines = out.splitlines()
        assert "native size      64×64" in lines  # unet sample_size 8 × the VAE's 8× (the model card's size)
        assert "sampling         10 steps, guidance 3, dpmpp_2m (generation_config.json)" in lines


def test_info_on_a_folder_without_generation_config_names_the_library_defaults(capsys, tiny_folder):
    code, out, _ = run(capsys, "info", tiny_folder)
    assert code == 0
    assert "native size      64×64" in out.splitlines()
    assert "sampling         25 steps, guidance 7.5, dpmpp_2m (library defaults: the model sets none)" in out.splitlines()


def test_info_on_lora_files_says_lora(capsys, tmp_path, tiny_sd1):
    from latentdiff.lora.formats import LoraModule
    from latentdiff.lora.io import LoraMetadata, save_lora

    g = torch.Generator().manual_seed(0)
    state = {f"unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_{p}": LoraModule(torch.randn(4, 64, generator=g),
                                                                                       torch.randn(64, 4, generator=g), 2.0)
             for p in ("q", "k", "v")}
    state["text_encoder.text_model.encoder.layers.0.self_attn.q_proj"] = LoraModule(torch.randn(8, 32), torch.randn(32, 8), 8.0)
    meta = LoraMetadata(base_model="tiny", kind="sd1", steps=120)
    for fmt, name in (("kohya", "kohya/A1111"), ("peft", "peft/diffusers")):
        path = save_lora(state, tmp_path / f"{fmt}.safetensors", format=fmt, metadata=meta)
        code, out, err = run(capsys, "info", path)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == f"LoRA             {path}" and f"format           {name}" in lines
        assert "modules          4 (text_encoder 1, unet 3)" in lines
        assert "rank             4 (3 layers), 8 (1 layers)" in lines
        assert "alpha            2 (3 layers), 8 (1 layers)" in lines
        assert "trained on       tiny (SD1), 120 steps" in lines
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"  # peft keys and no header: alpha unknown, taken as the rank
    save_file({"unet.down.lora_A.weight": torch.zeros(2, 8), "unet.down.lora_B.weight": torch.zeros(8, 2)}, str(bare))
    code, out, _ = run(capsys, "info", bare)
    assert code == 0 and "alpha            not recorded (taken as the rank: scale 1)" in out.splitlines()
    assert "rank             2" in out.splitlines()


# -- issue 13: lost files, non-finite numbers, --lora parsing, bench --table, --fast in img2img ----------------------------
def test_two_runs_in_one_folder_keep_both_images(tmp_path, monkeypatch, tiny_folder):
    """Both runs pick their names before drawing; the name is reserved only when the file is published."""
    import threading

    from latentdiff.cli.common import output_paths, save_outputs
    from latentdiff.pipelines.png_metadata import GenerationParams, save_png_numbered
    from latentdiff.pipelines.base import PipelineOutput

    monkeypatch.chdir(tmp_path)
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    first, second = output_paths(None, 1), output_paths(None, 1)  # two `generate` runs started together
    save_outputs(PipelineOutput([red], [GenerationParams("red", seed=1)]), first)
    save_outputs(PipelineOutput([blue], [GenerationParams("blue", seed=2)]), second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.png", "00001.png"]
    assert {read_png_params(tmp_path / n).prompt for n in ("00000.png", "00001.png")} == {"red", "blue"}

    # eight concurrent writers, released together: eight distinct, complete PNGs, no temp files left
    barrier, written, errors = threading.Barrier(8), [], []

    def writer(i: int) -> None:
        try:
            barrier.wait()
            written.append(save_png_numbered(Image.new("RGB", (8, 8), (i * 30, 0, 0)), GenerationParams(f"p{i}", seed=i), tmp_path))
        except Exception as e:  # noqa: BLE001 — reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len({p.name for p in written}) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i:05d}.png" for i in range(10)]
    for path in written:
        p = read_png_params(path)
        assert pixels(path)[0, 0, 0] == int(p.prompt[1:]) * 30 and p.seed == int(p.prompt[1:])


def test_non_finite_numbers_are_refused_by_the_python_api(tiny_folder, tmp_path):
    from latentdiff.errors import LatentDiffError
    from latentdiff.pipelines.png_metadata import GenerationParams

    with pytest.raises(LatentDiffError, match="non-finite generation parameters .guidance_scale"):
        GenerationParams("a cat", guidance_scale=float("nan")).to_json()
    assert json.loads(GenerationParams("a cat", guidance_scale=7.5).to_json())["guidance_scale"] == 7.5
    pipe = LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")
    image = Image.new("RGB", (64, 64), (120, 30, 200))
    mask = Image.new("L", (64, 64), 255)
    kw = dict(num_inference_steps=1, progress=False)
    cases = [
        (lambda: pipe("a", guidance_scale=float("nan"), **kw), "guidance_scale must be a finite number, got nan"),
        (lambda: pipe("a", guidance_scale=5, guidance_rescale=float("inf"), **kw), "guidance_rescale must be a finite number"),
        (lambda: pipe("a", seed=2**64, **kw), r"seed must be an integer in \[0, 2\^64\)"),
        (lambda: pipe("a", seed=-3, **kw), r"seed must be an integer in \[0, 2\^64\)"),
        (lambda: pipe("a", clip_skip=2, **kw), "--clip-skip 2 is beyond the text encoder's 2 layers"),
        (lambda: pipe("a", width=100000, height=100000, **kw), "100000x100000 needs about"),
        (lambda: pipe.img2img("a", image, strength=float("nan"), **kw), r"strength must be in \(0, 1\], got nan"),
        (lambda: pipe.img2img("a", image, guidance_scale=float("-inf"), **kw), "guidance_scale must be a finite number"),
        (lambda: pipe.inpaint("a", image, mask, mask_blur=float("nan"), **kw), "mask_blur must be a finite number"),
        (lambda: pipe.inpaint("a", image, mask, mask_blur=1e9, **kw), "larger than the image"),
        (lambda: pipe.load_lora(tmp_path / "x.safetensors", weight=float("nan")), "LoRA weight must be a finite number"),
        (lambda: pipe.set_loras({"x": float("inf")}), "LoRA weight of x must be a finite number"),
    ]
    for call, message in cases:
        with pytest.raises(LatentDiffError, match=message):
            call()


@pytest.mark.parametrize("text, expected", [
    ("x.safetensors", ("x.safetensors", 1.0)),
    ("x.safetensors:0.5", ("x.safetensors", 0.5)),
    ("x.safetensors:-1", ("x.safetensors", -1.0)),
    ("C:\\loras\\x.safetensors", ("C:\\loras\\x.safetensors", 1.0)),
    ("C:\\loras\\x.safetensors:0.7", ("C:\\loras\\x.safetensors", 0.7)),
    ("C:/loras/x.safetensors", ("C:/loras/x.safetensors", 1.0)),
    ("my:loras/x.safetensors", ("my:loras/x.safetensors", 1.0)),
    ("my:loras/x.safetensors:2", ("my:loras/x.safetensors", 2.0)),
    ("x.safetensors:abc", "LoRA weight 'abc' is not a number"),
    ("x.safetensors:nan", "LoRA weight 'nan' is not a finite number"),
    ("x.safetensors:-inf", "LoRA weight '-inf' is not a finite number"),
])
def test_lora_flag_parsing(text, expected):
    import argparse

    from latentdiff.cli.common import _lora_arg

    if isinstance(expected, tuple):
        assert _lora_arg(text) == expected
    else:
        with pytest.raises(argparse.ArgumentTypeError, match=expected):
            _lora_arg(text)


def test_lora_flag_keeps_an_existing_file_whose_name_has_a_colon(tmp_path, monkeypatch):
    from latentdiff.cli.common import _lora_arg

    monkeypatch.chdir(tmp_path)
    (tmp_path / "style:v2").write_bytes(b"")
    assert _lora_arg("style:v2") == ("style:v2", 1.0)


def test_bench_table_writes_where_asked_not_into_the_source_tree(capsys, tmp_path, monkeypatch):
    from latentdiff.cli.bench import BENCH_DIR

    tree = BENCH_DIR / "BENCHMARKS.md"
    before = (tree.read_bytes(), tree.stat().st_mtime_ns)
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "bench", "--table")
    assert code == 0 and out.strip() == str(Path("BENCHMARKS.md")) and "| " in (tmp_path / "BENCHMARKS.md").read_text()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "perf.md").write_text("# Ours\n\nhand-written notes\n")
    assert run(capsys, "bench", "--table", "docs/perf.md")[0] == 0
    text = (tmp_path / "docs" / "perf.md").read_text()
    assert text.startswith("# Ours\n\nhand-written notes\n") and "| " in text
    assert (tree.read_bytes(), tree.stat().st_mtime_ns) == before


def test_img2img_and_inpaint_take_fast_and_say_what_it_turned_on(capsys, tmp_path, tiny_folder):
    src = tmp_path / "in.png"
    Image.fromarray((np.indices((64, 64)).sum(0) * 2 % 256).astype(np.uint8)).convert("RGB").save(src)
    mask = tmp_path / "mask.png"
    Image.new("L", (64, 64), 255).save(mask)
    for cmd, extra in (("img2img", []), ("inpaint", ["--mask", mask])):
        plain, fast = tmp_path / f"{cmd}.png", tmp_path / f"{cmd}-fast.png"
        assert run(capsys, cmd, "a cat", "--image", src, *extra, "--model", tiny_folder, "--out", plain, *ARGS)[0] == 0
        code, _, err = run(capsys, cmd, "a cat", "--image", src, *extra, "--model", tiny_folder, "--out", fast, "--fast", *ARGS)
        assert code == 0
        said = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("fast:")]  # besides progress bars
        assert said == ["fast: vae_tiling>1024 on cpu fp32; no speed lever is proven faster on cpu fp32 yet"]
        if cmd == "img2img":  # bf16 on a CPU: channels-last by default, --fast adds tiling, --no-fast turns both off
            for flag, want in (("--fast", "fast: channels_last, vae_tiling>1024 on cpu bf16"), ("--no-fast", None)):
                args = [a if a != "fp32" else "bf16" for a in ARGS]
                code, _, err = run(capsys, cmd, "a cat", "--image", src, "--model", tiny_folder, "--out", tmp_path / "b.png", flag, *args)
                said = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("fast:")]
                assert code == 0 and said == ([want] if want else [])
        assert np.abs(pixels(plain) - pixels(fast)).max() == 0  # tiling starts above 1024 px: the same picture here
