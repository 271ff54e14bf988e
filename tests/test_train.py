"""From-scratch training: the tiny recipe trains (losses fall), exports a loadable fp16 folder, resumes, and refuses bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from latentdiff.errors import LatentDiffError

REPO = Path(__file__).resolve().parent.parent
COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (240, 200, 20)}
SHAPES = ("circle", "square", "triangle", "ring")


def make_shapes_dataset(root: Path, size: int = 32, holdout: tuple[str, ...] = ("yellow ring",)) -> Path:
    """16 captioned images (4 colours × 4 shapes on white) in the image-folder convention; `holdout` captions held out."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for colour, rgb in COLORS.items():
        for shape in SHAPES:
            im = Image.new("RGB", (size, size), "white")
            d, m = ImageDraw.Draw(im), size // 5
            if shape == "circle":
                d.ellipse((m, m, size - m, size - m), fill=rgb)
            elif shape == "square":
                d.rectangle((m, m, size - m, size - m), fill=rgb)
            elif shape == "triangle":
                d.polygon([(size // 2, m // 2), (size - m // 2, size - m // 2), (m // 2, size - m // 2)], fill=rgb)
            else:
                d.ellipse((m // 2, m // 2, size - m // 2, size - m // 2), outline=rgb, width=size // 8)
            name = f"{colour}-{shape}.png"
            im.save(root / name)
            lines.append(json.dumps({"file_name": name, "text": f"{colour} {shape}", "subgroup": shape, "group": colour,
                                     "split": "holdout" if f"{colour} {shape}" in holdout else "train"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def write_config(path: Path, data: Path, out: Path, **changes) -> Path:
    """configs/tiny-test.yaml pointed at data and out, with dotted-key changes ("train_vae.max_steps": 4)."""
    cfg = yaml.safe_load((REPO / "configs" / "tiny-test.yaml").read_text())
    cfg["data"]["root"], cfg["output_dir"] = str(data), str(out)
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def tiny_run(shapes, tmp_path_factory):
    """Both stages of the tiny recipe (8 steps each) and the export."""
    from latentdiff.training.stages import export, load_config, train_decoder, train_unet, train_vae

    base = tmp_path_factory.mktemp("run")
    cfg = load_config(write_config(base / "tiny.yaml", shapes, base / "out", **{
        "train_vae.max_steps": 8, "train_unet.max_steps": 8, "train_vae.sample_every": 8, "train_unet.sample_every": 8,
        "train_decoder.max_steps": 4, "train_decoder.log_every": 2, "train_decoder.sample_every": 0}))
    vae_losses = train_vae(cfg, progress=False)
    unet_losses = train_unet(cfg, progress=False)
    decoder_losses = train_decoder(cfg, progress=False)
    folder = export(cfg)
    return {"cfg": cfg, "base": base, "vae": vae_losses, "unet": unet_losses, "decoder": decoder_losses, "folder": folder}


def test_losses_fall(tiny_run):
    vae, unet = tiny_run["vae"], tiny_run["unet"]
    assert len(vae) == 4 and len(unet) == 4  # logged every 2 steps
    assert vae[-1] < 0.8 * vae[0], vae
    assert sum(unet[-2:]) / 2 < sum(unet[:2]) / 2, unet
    assert len(tiny_run["decoder"]) == 2 and tiny_run["decoder"][0] < vae[0]  # starts from the trained decoder


def test_decoder_stage_keeps_the_encoder(tiny_run):
    """The decoder stage changes only the decoder; the export carries it with the vae stage's encoder."""
    from safetensors.torch import load_file

    from latentdiff.checkpoints import load_components

    out = Path(tiny_run["cfg"].output_dir)
    vae_stage, tuned = load_file(str(out / "vae/checkpoints/latest/ema.safetensors")), load_file(str(out / "decoder/checkpoints/latest/ema.safetensors"))
    assert all(torch.equal(vae_stage[k], tuned[k]) for k in vae_stage if ".encoder." in k or ".quant_conv." in k and "post" not in k)
    assert any(not torch.equal(vae_stage[k], tuned[k]) for k in vae_stage if ".decoder." in k)
    exported = load_components(tiny_run["folder"]).vae.state_dict()
    k = "decoder.conv_out.weight"
    assert torch.equal(exported[k], tuned["vae." + k].half()) and torch.equal(exported["encoder.conv_in.weight"], vae_stage["vae.encoder.conv_in.weight"].half())


def test_outputs_on_disk(tiny_run):
    out = Path(tiny_run["cfg"].output_dir)
    for stage in ("vae", "unet"):
        ck = out / stage / "checkpoints" / "latest"
        assert {"arch.json", "model.safetensors", "ema.safetensors", "state.pt"} <= {p.name for p in ck.iterdir()}
        assert torch.load(ck / "state.pt", weights_only=False)["step"] == 8
        rows = (out / stage / "log.csv").read_text().splitlines()
        assert rows[0].startswith("step,loss") and len(rows) == 5
        assert not list(ck.glob(".*tmp"))  # no half-written files left
    assert (out / "vae" / "samples" / "recon-000008.png").is_file()
    grid = Image.open(out / "unet" / "samples" / "step-000008.png")
    assert grid.size == (32 * 2, 32)  # one image per sample prompt


def test_export_is_fp16_and_generates(tiny_run):
    from safetensors import safe_open

    from latentdiff.checkpoints import load_components
    from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline

    folder = tiny_run["folder"]
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        with safe_open(str(folder / part), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys() if "position_ids" not in k} == {torch.float16}, part
    c = load_components(folder)
    assert c.vae.config.scaling_factor != 1.0 and c.prediction_type == "epsilon"
    assert c.unet.config.sample_size == 8 and c.unet.config.cross_attention_dim == 32
    pipe = LatentDiffusionPipeline.from_pretrained(folder, device="cpu", dtype=torch.float32)
    assert pipe.unet.dtype == torch.float32
    image = pipe("red circle", num_inference_steps=4, seed=0, progress=False).images[0]
    assert image.size == (32, 32)  # the native size: 8×8 latents × 4
    assert c.generation == {} and not (folder / "generation_config.json").exists()


def test_export_writes_the_configs_sampling_defaults(tiny_run, shapes):
    from latentdiff.checkpoints import load_components
    from latentdiff.training.stages import export, load_config

    base = tiny_run["base"]
    cfg = load_config(write_config(base / "gen.yaml", shapes, tiny_run["cfg"].output_dir,
                                   generation={"num_inference_steps": 10, "guidance_scale": 3, "sampler": "DPM++ 2M"}))
    folder = export(cfg, base / "with-defaults")
    assert load_components(folder).generation == {"num_inference_steps": 10, "guidance_scale": 3, "sampler": "dpmpp_2m"}


def test_resume_continues_and_refuses_other_architecture(tiny_run, shapes):
    from latentdiff.training.stages import load_config, train_vae

    import shutil

    base = tiny_run["base"]
    out = shutil.copytree(tiny_run["cfg"].output_dir, base / "resumed", symlinks=True)  # the module's run stays as it is
    cfg = load_config(write_config(base / "more.yaml", shapes, out, **{"train_vae.max_steps": 10, "train_vae.sample_every": 0}))
    with pytest.raises(LatentDiffError, match="already holds a checkpoint; pass --resume"):
        train_vae(cfg, progress=False)
    losses = train_vae(cfg, resume=True, progress=False)
    assert len(losses) == 1  # steps 9–10 only
    assert torch.load(Path(out) / "vae" / "checkpoints" / "latest" / "state.pt", weights_only=False)["step"] == 10
    other = load_config(write_config(base / "other.yaml", shapes, out, **{"vae.block_out_channels": [8, 16, 32]}))
    with pytest.raises(LatentDiffError, match=r"^cannot resume: the checkpoint's vae has block_out_channels=\[8, 16, 16\], the config says \[8, 16, 32\]$"):
        train_vae(other, resume=True, progress=False)


@pytest.mark.parametrize("changes, message", [
    ({"learning_rate": 1.0}, "unknown config key learning_rate"),
    ({"train_vae.lr_warmup": 5}, "unknown config key train_vae.lr_warmup"),
    ({"unet.channels": [8, 16]}, "unknown config key unet.channels"),
    ({"data.split": "test"}, "data.split must be 'train' or 'all'"),
    ({"generation": {"steps": 10}}, "generation: unknown key 'steps'"),
])
def test_config_errors_name_the_key(tmp_path, shapes, changes, message):
    from latentdiff.training.stages import load_config

    with pytest.raises(LatentDiffError, match=f"^{message}"):
        load_config(write_config(tmp_path / "bad.yaml", shapes, tmp_path / "out", **changes))


def test_cli_prints_one_line_error(tmp_path, shapes, capsys):
    from latentdiff.cli import main

    assert main(["train", str(write_config(tmp_path / "bad.yaml", shapes, tmp_path / "out", **{"vae.depth": 3}))]) == 2
    assert capsys.readouterr().err == "error: unknown config key vae.depth\n"
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_bad_datasets(tmp_path, caplog):
    from latentdiff.data.config import DataConfig
    from latentdiff.data.pixels import PixelCache

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LatentDiffError, match="no images in"):
        PixelCache.load_or_build(DataConfig(root=str(empty), resolution=32), tmp_path / "c0.pt", progress=False)

    data = make_shapes_dataset(tmp_path / "mixed")
    Image.new("RGB", (32, 32), "white").save(data / "no-caption.png")  # no metadata line, no .txt
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (data / "broken.txt").write_text("a broken image")
    cache = PixelCache.load_or_build(DataConfig(root=str(data), resolution=32), tmp_path / "c1.pt", progress=False)
    assert len(cache) == 15 and cache.images.shape == (15, 3, 32, 32)  # 16 − 1 held out; the two bad ones skipped
    assert (cache.report.unreadable, cache.report.uncaptioned) == (1, 1)
    assert "skipped 1 unreadable, 1 without caption" in caplog.text

    uncaptioned = tmp_path / "uncaptioned"
    uncaptioned.mkdir()
    Image.new("RGB", (32, 32), "red").save(uncaptioned / "a.png")
    with pytest.raises(LatentDiffError, match="no usable images"):
        PixelCache.load_or_build(DataConfig(root=str(uncaptioned), resolution=32), tmp_path / "c2.pt", progress=False)


@pytest.mark.slow
def test_two_process_accelerate_launch_matches_one_process(tmp_path, shapes):
    """`accelerate launch --num_processes 2 --cpu`: each process takes half the global batch; the first logged loss matches one process's."""
    from latentdiff.training.stages import load_config, train_vae

    changes = {"train_vae.max_steps": 4, "train_vae.sample_every": 0, "train_vae.batch_size": 4, "train_vae.warmup_steps": 2,
               "train_vae.decay_steps": 2}
    one = load_config(write_config(tmp_path / "one.yaml", shapes, tmp_path / "one", **changes))
    single = train_vae(one, progress=False)
    two = write_config(tmp_path / "two.yaml", shapes, tmp_path / "two", **{**changes, "train_vae.batch_size": 2})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu", "-m", "latentdiff.cli", "train", str(two), "--stage", "vae"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = (tmp_path / "two" / "vae" / "log.csv").read_text().splitlines()[1:]
    assert len(rows) == 2
    losses = [float(r.split(",")[1]) for r in rows]
    assert losses[0] == pytest.approx(single[0], rel=1e-2)  # same init, same global batch split in halves
    assert losses[1] < losses[0] and single[1] < single[0]
    assert torch.load(tmp_path / "two" / "vae" / "checkpoints" / "latest" / "state.pt", weights_only=False)["step"] == 4
    lrs = [float(r.split(",")[2]) for r in rows]  # steps 2 and 4 of warm-up 2, decay 2: not stepped once per process
    assert lrs == pytest.approx([3e-3, 1.5e-3], rel=1e-3)


def test_warmup_stable_decay_schedule():
    """Warm-up, constant, then linear decay to 0 over the last steps; a pure function of the step, so --resume is exact."""
    from functools import partial

    from latentdiff.training.schedule import lr_factor

    f = partial(lr_factor, kind="wsd", warmup=10, total=100, decay=20)
    assert [f(s) for s in (0, 4, 9, 50, 79)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    assert [f(s) for s in (80, 90, 99, 100)] == [1.0, 0.5, 0.05, 0.0]
    g = partial(lr_factor, kind="wsd", warmup=10)  # no decay: the old warm-up-then-constant schedule
    assert g(5000) == 1.0 and g(4) == 0.5


def test_max_minutes_stops_at_a_log_step_with_a_checkpoint(shapes, tmp_path):
    """A time budget ends the stage early: the last step is a log step, checkpointed, and --resume goes on from it."""
    from latentdiff.training.stages import load_config, train_vae

    cfg = load_config(write_config(tmp_path / "t.yaml", shapes, tmp_path / "out", **{
        "train_vae.max_steps": 1000, "train_vae.max_minutes": 1e-6, "train_vae.log_every": 3, "train_vae.sample_every": 0}))
    losses = train_vae(cfg, progress=False)
    assert len(losses) == 1  # stopped at the first log step, step 3
    state = torch.load(tmp_path / "out" / "vae" / "checkpoints" / "latest" / "state.pt", weights_only=False)
    assert state["step"] == 3
    rows = (tmp_path / "out" / "vae" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "3"]
    assert len(train_vae(cfg, resume=True, progress=False)) == 1  # each run gets its own budget: steps 4–6
    assert torch.load(tmp_path / "out" / "vae" / "checkpoints" / "latest" / "state.pt", weights_only=False)["step"] == 6


def test_token_cache_matches_the_tokenizer():
    """Memoised ids are the tokenizer's ids, in the batch's order, repeats included."""
    from latentdiff.checkpoints.loader import load_tokenizer
    from latentdiff.training.parts import TokenCache, tokenize

    tok = load_tokenizer(None, "sd1")
    cache = TokenCache(tok)
    batch = ["a 3d emoji of a cat", "", "rocket", "a 3d emoji of a cat"]
    assert torch.equal(cache(batch), tokenize(tok, batch))
    assert torch.equal(cache(["rocket", "sun"]), tokenize(tok, ["rocket", "sun"]))
    assert len(cache.ids) == 4


def test_ema_update_and_move():
    """θ_ema ← dθ_ema + (1−d)θ on every floating tensor (warm-up decay 1/10 at step 0), and .to() keeps the values."""
    from latentdiff.training.ema import EMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.9)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.to("cpu").update(model)
    d = 1 / 10
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(ema.shadow[k], d * before[k] + (1 - d) * v.float())
    assert "1.num_batches_tracked" not in ema.shadow


def test_posterior_mean_option(shapes, tmp_path):
    """train_unet.posterior takes "sample" (LDM) or "mean"; anything else is a one-line error naming the key."""
    from latentdiff.training.stages import load_config

    with pytest.raises(LatentDiffError, match="train_unet.posterior must be 'sample' or 'mean', got 'mode'"):
        load_config(write_config(tmp_path / "bad.yaml", shapes, tmp_path / "o", **{"train_unet.posterior": "mode"}))
    assert load_config(write_config(tmp_path / "ok.yaml", shapes, tmp_path / "o", **{"train_unet.posterior": "mean"})).train_unet.posterior == "mean"


def test_checkpoint_minutes_saves_by_the_clock(shapes, tmp_path, monkeypatch):
    """checkpoint_minutes > 0 checkpoints at every log step once that long has passed, besides checkpoint_every."""
    import latentdiff.training.stages as train

    saved = []
    real = train.save_checkpoint
    monkeypatch.setattr(train, "save_checkpoint", lambda folder, arch, model, ema, opt, step: (saved.append(step),
                                                                                            real(folder, arch, model, ema, opt, step)))
    cfg = train.load_config(write_config(tmp_path / "t.yaml", shapes, tmp_path / "out", **{
        "train_vae.max_steps": 6, "train_vae.checkpoint_minutes": 1e-6, "train_vae.checkpoint_every": 1000,
        "train_vae.log_every": 2, "train_vae.sample_every": 0}))
    train.train_vae(cfg, progress=False)
    assert saved == [2, 4, 6]  # every log step (the clock is always due), not only the last


def test_resume_reads_the_old_layout_and_the_old_flag_order(shapes, tmp_path, caplog, capsys):
    """A run written as `vae/checkpoint/` + `loss.csv` resumes (one note each) into checkpoints/step-N + latest and
    log.csv; `train --resume CONFIG` is read as `train CONFIG --resume`; --resume PATH names one checkpoint."""
    import shutil

    from latentdiff.cli import main
    from latentdiff.training.stages import load_config, train_vae

    changes = {"train_vae.max_steps": 2, "train_vae.log_every": 1, "train_vae.checkpoint_every": 1, "train_vae.sample_every": 0}
    cfg = load_config(write_config(tmp_path / "t.yaml", shapes, tmp_path / "out", **changes))
    train_vae(cfg, progress=False)
    vae = tmp_path / "out" / "vae"
    assert sorted(p.name for p in (vae / "checkpoints").iterdir()) == ["latest", "step-000001", "step-000002"]
    assert (vae / "checkpoints" / "latest").resolve() == (vae / "checkpoints" / "step-000002").resolve()
    shutil.copytree(vae / "checkpoints" / "step-000002", vae / "checkpoint")  # as a run from before the new layout
    shutil.rmtree(vae / "checkpoints")
    (vae / "log.csv").rename(vae / "loss.csv")
    more = write_config(tmp_path / "more.yaml", shapes, tmp_path / "out", **{**changes, "train_vae.max_steps": 3})
    assert main(["train", "--resume", str(more), "--stage", "vae"]) == 0
    assert "note: --resume takes an optional checkpoint now" in capsys.readouterr().err
    assert "reading the old checkpoint layout" in caplog.text and "loss.csv is now log.csv" in caplog.text
    assert [r.split(",")[0] for r in (vae / "log.csv").read_text().splitlines()] == ["step", "1", "2", "3"]
    assert torch.load(vae / "checkpoints" / "latest" / "state.pt", weights_only=False)["step"] == 3
    step3 = vae / "checkpoints" / "step-000003"
    assert main(["train", str(more), "--stage", "vae", "--resume", str(step3)]) == 0  # already at max_steps: nothing to do
    assert main(["train", str(more), "--resume", str(step3)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: --resume CHECKPOINT names one stage's checkpoint; add --stage vae, unet or decoder"
