"""`--replay PNG`: recorded settings (dtype too) unless a flag overrides them; files found where the PNG is; A1111 PNGs."""

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import latentdiff.runtime as runtime
from helpers import run
from latentdiff.cli import main
from latentdiff.hashes import lora_hash, model_hash
from latentdiff.lora.attach import random_state
from latentdiff.lora.io import save_lora
from latentdiff.pipelines.png_metadata import read_png_params
from latentdiff.pipelines.replay import apply_replay, from_a1111

ARGS = ["--steps", "2", "--seed", "11", "--guidance", "5", "--width", "48", "--height", "64"]


def messages(err: str) -> list[str]:
    """Our lines on stderr (progress bars left out)."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith(("note:", "warning:", "error:"))]


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int16)


@pytest.fixture()
def bf16_cpu(monkeypatch):
    """A CPU whose `--dtype auto` is bf16 (as on AVX512-BF16 machines), whatever this one is."""
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)


@pytest.fixture()
def ink(tiny_sd1, tmp_path):
    state = random_state(tiny_sd1.unet, tiny_sd1.text_encoder, unet_targets=("attention", "proj"), rank=4, alpha=2.0,
                         text_targets=("attention", "mlp"), seed=3, std=0.3)
    return save_lora(state, tmp_path / "ink.safetensors", format="kohya")


def test_replay_of_an_fp32_png_uses_fp32_on_a_bf16_cpu(capsys, tmp_path, tiny_folder, bf16_cpu):
    fp32, auto, again = tmp_path / "fp32.png", tmp_path / "auto.png", tmp_path / "again.png"
    assert run(capsys, "generate", "a cat", "--model", tiny_folder, "--dtype", "fp32", "--out", fp32, *ARGS)[0] == 0
    assert run(capsys, "generate", "a cat", "--model", tiny_folder, "--out", auto, *ARGS)[0] == 0
    assert read_png_params(auto).dtype == "bfloat16"  # the default here, which the replay used before
    assert np.abs(pixels(auto) - pixels(fp32)).max() > 0
    code, _, err = run(capsys, "generate", "--replay", fp32, "--out", again)
    assert code == 0 and messages(err) == []
    assert read_png_params(again).dtype == "float32"
    assert np.abs(pixels(again) - pixels(fp32)).max() == 0


def test_flags_override_the_replayed_settings(capsys, tmp_path, tiny_folder, ink):
    src = tmp_path / "src.png"
    assert run(capsys, "generate", "a cat", "--model", tiny_folder, "--dtype", "fp32", "--out", src, *ARGS)[0] == 0
    out = tmp_path / "steps.png"
    assert run(capsys, "generate", "--replay", src, "--steps", "3", "--out", out)[0] == 0
    p = read_png_params(out)
    assert (p.steps, p.seed, p.prompt, p.width, p.height, p.dtype) == (3, 11, "a cat", 48, 64, "float32")
    out2 = tmp_path / "flags.png"
    assert run(capsys, "generate", "a dog", "--replay", src, "--seed", "5", "--sampler", "euler", "--lora", f"{ink}:0.5",
               "--clip-skip", "1", "--dtype", "bf16", "--out", out2)[0] == 0
    p = read_png_params(out2)
    assert (p.prompt, p.seed, p.sampler, p.loras, p.clip_skip, p.dtype, p.steps) == \
        ("a dog", 5, "euler", [[str(ink), 0.5]], 1, "bfloat16", 2)


def test_replay_finds_moved_files_and_warns_on_changed_hashes(capsys, tmp_path, tiny_folder, ink, monkeypatch):
    a = tmp_path / "a"
    a.mkdir()
    model = shutil.copytree(tiny_folder, a / "tiny-sd1")
    lora = shutil.move(str(ink), a / "ink.safetensors")
    png = a / "x.png"
    assert run(capsys, "generate", "a cat", "--model", model, "--lora", f"{lora}:0.7", "--dtype", "fp32", "--out", png,
               *ARGS)[0] == 0
    p = read_png_params(png)
    assert p.model_hash == model_hash(model) and p.lora_hashes == {str(lora): lora_hash(lora)}
    assert f'Lora hashes: "ink: {lora_hash(lora)}"' in png_text(png)
    recorded = lora_hash(lora)

    b = shutil.move(str(a), tmp_path / "b")  # the PNG, model and LoRA moved together: found next to the PNG
    elsewhere = tmp_path / "c"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run(capsys, "generate", "--replay", b / "x.png", "--out", "again.png")
    assert code == 0 and messages(err) == []
    assert np.array_equal(pixels(b / "x.png"), pixels(elsewhere / "again.png"))
    again = read_png_params(elsewhere / "again.png")
    assert again.model == str(b / "tiny-sd1") and again.loras == [[str(b / "ink.safetensors"), 0.7]]

    save_lora(random_state(*_modules(b / "tiny-sd1"), unet_targets=("attention",), seed=9, std=0.3), b / "ink.safetensors",
              format="kohya")  # same name, other weights
    code, _, err = run(capsys, "generate", "--replay", b / "x.png", "--out", "changed.png")
    lines = messages(err)
    assert code == 0 and len(lines) == 1 and lines[0].startswith("warning: LoRA") and recorded in lines[0]

    shutil.rmtree(b / "tiny-sd1")
    code, _, err = run(capsys, "generate", "--replay", b / "x.png", "--out", "gone.png")
    assert code == 2 and err.startswith("error: the model") and "--model PATH" in err and len(err.splitlines()) == 1
    assert not (elsewhere / "gone.png").exists()


def _modules(folder):
    from latentdiff.checkpoints import load_components

    c = load_components(folder)
    return c.unet, c.text_encoder


def png_text(path) -> str:
    with Image.open(path) as im:
        return im.info["parameters"]


A1111_TEXT = ("a cat in a hat, (masterpiece:1.2) <lora:ink:0.6> <lora:missing:1>\n"
              "Negative prompt: blurry\n"
              "Steps: 2, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, Seed: 11, Size: 48x64, "
              "Model hash: 0123456789, Model: tiny-sd1, Clip skip: 2, Denoising strength: 0.5, Hires upscale: 2, "
              "Hires upscaler: Latent, Face restoration: CodeFormer, Lora hashes: \"ink: abcdef012345, missing: 0123456789ab\", "
              "Version: v1.10.1")


def a1111_png(path, text=A1111_TEXT):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (48, 64), (128, 64, 32)).save(path, pnginfo=info)
    return path


def test_replay_of_an_a1111_png_redraws_with_the_nearest_settings(capsys, tmp_path, tiny_folder, ink):
    folder = tmp_path / "shots"
    folder.mkdir()
    shutil.copytree(tiny_folder, folder / "tiny-sd1")
    lora = shutil.copy(ink, folder / "ink.safetensors")
    png = a1111_png(folder / "a1111.png")
    out = tmp_path / "ours.png"
    code, _, err = run(capsys, "generate", "--replay", png, "--dtype", "fp32", "--out", out)
    assert code == 0
    lines = messages(err)
    assert [line.split(" ", 2)[:2] for line in lines] == [
        ["note:", "Face"], ["note:", "RNG:"],  # (masterpiece:1.2) is weighted and the hires fix redrawn, as A1111 does
        ["warning:", "model"], ["warning:", "LoRA"], ["note:", "LoRA"]]
    assert "'missing'" in lines[4] and "0123456789" in lines[2] and "abcdef012345" in lines[3]
    p = read_png_params(out)
    assert (p.prompt, p.negative_prompt, p.steps, p.sampler, p.guidance_scale, p.seed, p.width, p.height, p.clip_skip) == \
        ("a cat in a hat, (masterpiece:1.2)", "blurry", 2, "dpmpp_2m_karras", 5.0, 11, 48, 64, 1)
    assert p.model == str(folder / "tiny-sd1") and p.loras == [[str(lora), 0.6]]
    direct = tmp_path / "direct.png"
    assert run(capsys, "generate", "a cat in a hat, (masterpiece:1.2)", "--negative", "blurry", "--model", folder / "tiny-sd1",
               "--lora", f"{lora}:0.6", "--sampler", "dpmpp_2m_karras", "--clip-skip", "1", "--dtype", "fp32",
               "--hires-scale", "2", "--hires-strength", "0.5", "--hires-upscaler", "latent", "--out", direct, *ARGS)[0] == 0
    assert np.array_equal(pixels(out), pixels(direct))


def test_a1111_model_not_found_falls_back_to_the_embedded_model_with_a_notice(tmp_path):
    png = a1111_png(tmp_path / "x.png", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 64x64, "
                                         "Model: nowhere, RNG: CPU, Sampler extra: 1")
    args = SimpleNamespace(replay=str(png), prompt=None, negative="", steps=None, sampler=None, guidance=None, seed=None,
                           width=None, height=None, guidance_rescale=0.0, clip_skip=0, dtype="auto", device="auto",
                           num=1, model=None, lora=[])
    lines, expected = apply_replay(args, "generate")
    assert args.model is None and expected == {}
    assert lines == ["note: Sampler extra: 1 — not one of ours",
                     "note: model nowhere is not next to the PNG nor in the current folder; drawing with the embedded default model"]
    assert (args.prompt, args.steps, args.sampler, args.seed, args.width, args.guidance) == ("a cat", 20, "euler_a", 3, 64, 7.0)


def test_a1111_text_without_settings_or_with_unknown_sampler(tmp_path):
    src = from_a1111("a cat\nSteps: 20, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 7, Seed: nan, Size: 64x64")
    assert src.params.sampler == "dpmpp_2m" and src.params.seed == 0
    assert src.notices[:2] == ["sampler 'DPM++ SDE' is not one of ours; drawing with dpmpp_2m",
                               "Seed: 'nan' is not a number; using 0"]
    assert main(["generate", "--replay", str(a1111_png(tmp_path / "p.png", "only a prompt")),
                 "--out", str(tmp_path / "o.png")]) == 2
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert main(["generate", "--replay", str(plain), "--out", str(tmp_path / "o.png")]) == 2
    assert not (tmp_path / "o.png").exists()


def test_an_fp16_png_replays_in_fp32_on_a_cpu_with_a_note(tmp_path):
    from latentdiff.pipelines.png_metadata import GenerationParams, save_png

    png = save_png(Image.new("RGB", (64, 64)), GenerationParams(prompt="a cat", steps=4, dtype="float16", model="default"),
                   tmp_path / "half.png")
    args = SimpleNamespace(replay=str(png), prompt=None, negative="", steps=None, sampler=None, guidance=None, seed=None,
                           width=None, height=None, guidance_rescale=0.0, clip_skip=0, dtype="auto", device="cpu",
                           num=1, model=None, lora=[])
    lines, _ = apply_replay(args, "generate")
    assert (args.dtype, args.model, args.steps) == ("fp32", None, 4)
    assert lines == ["note: drawn in fp16, which this CPU cannot run; drawing in fp32"]
    args.replay, args.dtype, args.steps = str(png), "bf16", None
    assert apply_replay(args, "generate")[0] == [] and args.dtype == "bf16"
