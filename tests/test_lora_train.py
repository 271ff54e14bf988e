"""LoRA training on tiny models: the loss goes down, files load here and in diffusers, resume is exact, the CLI works."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from latentdiff.cli import main
from latentdiff.errors import LatentDiffError
from latentdiff.lora.io import read_lora
from latentdiff.pipelines.png_metadata import read_png_params
from latentdiff.training.lora import LoraTrainConfig, load_config, train_lora


def make_images(folder, n, caption, colour, seed=0, sizes=((64, 64),)):
    """n images of a coloured square on blue at random places, with kohya .txt captions."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        a = np.zeros((h, w, 3), np.uint8)
        a[:] = (30, 60, 200)
        y, x = rng.integers(4, h - 28), rng.integers(4, w - 28)
        a[y:y + 24, x:x + 24] = colour
        Image.fromarray(a).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(caption)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("data") / "squares", 8, "a red square on blue", (220, 40, 40))


def config(model, data, out, **kw):
    base = dict(model=str(model), data=str(data), output_dir=str(out), rank=8, alpha=4.0, lr=3e-3, max_steps=30, batch_size=4,
                targets=["attention", "proj"], checkpoint_every=0, log_every=5, eval_items=8, device="cpu")
    return LoraTrainConfig(**{**base, **kw})


def test_training_lowers_loss_and_the_file_matches_diffusers(tiny_folder, tiny_sd1, data, tmp_path):
    from diffusers import StableDiffusionPipeline

    from latentdiff.pipelines.samplers import make_scheduler
    from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline

    result = train_lora(config(tiny_folder, data, tmp_path / "run", random_flip=True), progress=False)
    assert result.eval_loss_end < 0.95 * result.eval_loss_start  # fixed noise and timesteps: a fair before/after
    peft_file, kohya_file = result.files
    assert peft_file.name == "pytorch_lora_weights.safetensors" and kohya_file.name == "lora.safetensors"
    with safe_open(str(kohya_file), "pt") as f:
        header = f.metadata()
        alphas = {f.get_tensor(k).item() for k in f.keys() if k.endswith(".alpha")}
    assert alphas == {4.0} and header["ss_network_dim"] == "8" and header["latentdiff.steps"] == "30"
    assert header["latentdiff.dataset_size"] == "8" and len(header["latentdiff.base_model_hash"]) == 10
    assert (tmp_path / "run" / "cache" / "latents.safetensors").is_file()  # 8 images + 8 mirrored, encoded once
    with safe_open(str(tmp_path / "run" / "cache" / "latents.safetensors"), "pt") as f:
        assert len(list(f.keys())) == 16
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,seconds" and len(rows) == 7

    kw = dict(num_inference_steps=3, guidance_scale=5.0, height=64, width=64)
    ours = LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")
    base = ours("a red square on blue", sampler="euler", seed=1, progress=False, **kw).images[0]
    ours.load_lora(kohya_file)
    got = ours("a red square on blue", sampler="euler", seed=1, progress=False, **kw).images[0]
    ref = StableDiffusionPipeline.from_pretrained(str(tiny_folder), safety_checker=None, local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = make_scheduler("euler", tiny_sd1.scheduler_config)
    ref.load_lora_weights(str(peft_file))
    want = ref("a red square on blue", generator=torch.Generator("cpu").manual_seed(1), **kw).images[0]
    diff = np.abs(np.asarray(want).astype(int) - np.asarray(got).astype(int))
    assert diff.max() <= 2
    assert np.abs(np.asarray(got).astype(int) - np.asarray(base).astype(int)).mean() > 0.5  # the trained LoRA acts


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tiny_folder, data, tmp_path):
    kw = dict(max_steps=6, checkpoint_every=3, grad_accum=2, batch_size=3, lr_scheduler="cosine", warmup_steps=2,
              caption_dropout=0.3, random_flip=True, eval_items=0)
    whole = train_lora(config(tiny_folder, data, tmp_path / "whole", **kw), progress=False)
    checkpoint = tmp_path / "whole" / "checkpoints" / "step-000003"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["pytorch_lora_weights.safetensors", "state.pt"]
    assert not list((tmp_path / "whole" / "checkpoints").glob(".tmp-*"))

    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    checkpoint.rename(tmp_path / "resumed" / "checkpoints" / checkpoint.name)  # as if the run had died after step 3
    resumed = train_lora(config(tiny_folder, data, tmp_path / "resumed", cache_dir=str(tmp_path / "whole" / "cache"), **kw),
                         resume="latest", progress=False)
    a, b = read_lora(whole.files[0]).state, read_lora(resumed.files[0]).state
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k].up, b[k].up, atol=1e-6) and torch.allclose(a[k].down, b[k].down, atol=1e-6) for k in a)
    assert max(float(a[k].up.abs().max()) for k in a) > 0  # lora_B left zero would make this trivial

    with pytest.raises(LatentDiffError, match="cannot resume: the checkpoint's LoRA has rank=8, the config says 4"):
        train_lora(config(tiny_folder, data, tmp_path / "whole", **{**kw, "rank": 4}), resume=str(tmp_path / "resumed" /
                   "checkpoints" / "step-000003"), progress=False)


def test_cli_yaml_with_flags_text_encoder_reg_images_validation_on_sd2(tiny_folder_sd2, data, tmp_path, capsys):
    reg = make_images(tmp_path / "reg", 3, "a square on blue", (40, 200, 40), seed=5, sizes=((96, 64), (64, 64)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""
model: {tiny_folder_sd2}
data: {data}
output_dir: {tmp_path / 'run'}
output_name: squares
rank: 4
alpha: 2
targets: [attention, proj, ff]
train_text_encoder: true
instance_token: zwx
reg_data: {reg}
prior_loss_weight: 0.5
cache_latents: false
random_crop: true
caption_dropout: 0.2
min_snr_gamma: 5.0
noise_offset: 0.05
max_steps: 100
batch_size: 2
save_formats: [kohya]
validation_prompts: ["zwx, a red square on blue"]
validation_every: 2
validation_steps: 2
device: cpu
""")
    assert main(["train-lora", str(recipe), "--max-steps", "4", "--rank", "2", "--eval-items", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out.splitlines()
    kohya = tmp_path / "run" / "squares.safetensors"
    assert printed[0] == str(kohya) and printed[-1].startswith("4 steps in")
    lora = read_lora(kohya, _keys(tiny_folder_sd2))
    assert {m.rank for m in lora.state.values()} == {2} and {m.alpha for m in lora.state.values()} == {2.0}  # flag beat YAML
    text = [m for k, m in lora.state.items() if k.startswith("text_encoder.")]
    assert len(text) == 2 * 4 and all(float(m.up.abs().max()) > 0 for m in text)  # the text encoder LoRA trained
    assert any(k.endswith("ff.net.2") for k in lora.state) and lora.metadata.kind == "sd2"
    pngs = sorted((tmp_path / "run" / "validation").glob("*.png"))
    assert [p.name for p in pngs] == ["step-000002-0.png", "step-000004-0.png"]
    assert read_png_params(pngs[1]).extra == {"LoRA step": 4}
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["rank"] == 2


def _keys(folder):
    from latentdiff.checkpoints import load_components
    from latentdiff.lora.attach import component_modules

    c = load_components(folder)
    return list(component_modules(c.unet, c.text_encoder))


def test_bad_settings_fail_with_one_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("data: x\nranks: 4\n")
    assert main(["train-lora", str(tmp_path / "bad.yaml")]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown train-lora setting 'ranks'"
    for values, message in [({"data": "x", "random_crop": True}, "random_crop needs cache_latents: false"),
                            ({"data": "x", "mixed_precision": "fp8"}, "mixed_precision must be one of"),
                            ({"data": "x", "targets": "to_q", "rank": "four"}, "rank must be a int"),
                            ({}, "no training data")]:
        with pytest.raises(LatentDiffError, match=message):
            load_config(None, values)


def test_demo_sets(data, tmp_path):
    from latentdiff.data.lora_demo import make_sketch_set, make_subject_set

    assert make_sketch_set(data, tmp_path / "sketch", count=3, progress=False) == 3
    captions = sorted(p.read_text() for p in (tmp_path / "sketch").glob("*.txt"))
    assert captions == ["a red square on blue, sketch style"] * 3
    a = np.asarray(Image.open(tmp_path / "sketch" / "0000.png")).astype(int)
    assert (a[..., 0] == a[..., 2]).all() and np.median(a) > 200  # gray lines on white paper
    assert make_subject_set(data, tmp_path / "subject", name="a red square on blue", progress=False) == 8
    with pytest.raises(LatentDiffError, match="no image in .* is captioned 'merman'"):
        make_subject_set(data, tmp_path / "none", name="merman", progress=False)


def test_demo_sets_from_the_command_line(data, tmp_path, capsys):
    """`latentdiff data lora-demo`: the sets in seconds; a caption no image has is one line and exit 2."""
    from helpers import run

    code, out, _ = run(capsys, "data", "lora-demo", "sketch", data, tmp_path / "sketch", "--count", 2)
    assert code == 0 and out.strip() == f"2 images in {tmp_path / 'sketch'}" and len(list((tmp_path / "sketch").glob("*.txt"))) == 2
    code, out, _ = run(capsys, "data", "lora-demo", "subject", data, tmp_path / "subject", "--name", "a red square on blue")
    assert code == 0 and out.strip() == f"8 images in {tmp_path / 'subject'}"
    code, out, err = run(capsys, "data", "lora-demo", "subject", data, tmp_path / "none", "--name", "merman")
    assert code == 2 and out == "" and err.strip().count("\n") == 0 and "is captioned 'merman'" in err
