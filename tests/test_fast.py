"""Fast paths draw the default path's pixels; VAE tiling keeps shape and hides seams; the benchmark harness runs."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentdiff import fast
from latentdiff.cli import main as cli_main
from latentdiff.errors import LatentDiffError
from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a lighthouse at dusk"


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def draw(pipe, **kw):
    return pixels(pipe(PROMPT, "fog", num_inference_steps=4, guidance_scale=6.0, sampler="dpmpp_2m", seed=3, progress=False, **kw).images[0])


@pytest.fixture(scope="module")
def default_image(tiny_folder):
    return draw(LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32"))


def test_fast_pipeline_draws_the_default_picture(tiny_folder, default_image):
    pipe = LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32", fast=True)
    assert pipe.fast_levers == [*fast.levers_for(pipe.device, pipe.dtype), "vae_tiling>1024"]
    got = draw(pipe)
    assert default_image.std() > 5  # a real picture, not a flat field
    assert np.abs(got - default_image).mean() <= 0.05 and np.abs(got - default_image).max() <= 1


def test_the_default_turns_on_what_the_benchmark_proved(tiny_folder):
    """bf16 on a CPU: channels-last is on unless fast=False (benchmarks/results/cpu_step.json); fp32: nothing."""
    assert fast.levers_for(torch.device("cpu"), torch.bfloat16) == ("channels_last",)
    assert fast.levers_for(torch.device("cpu"), torch.float32) == () and fast.levers_for(torch.device("cuda"), torch.float16) == ()
    assert set(fast.EVIDENCE) == set(fast.PROVEN) and all(Path(REPO, e.split(":")[0]).is_file() for e in fast.EVIDENCE.values())
    on = LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="bf16")
    off = LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="bf16", fast=False)
    assert on.fast_levers == ["channels_last"] and off.fast_levers == []
    assert on.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert on.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert off.unet.conv_in.weight.is_contiguous() and not off.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    a, b = draw(on), draw(off)
    assert a.std() > 5 and np.abs(a - b).mean() <= 1.0, np.abs(a - b).mean()  # bf16 rounding in another op order only
    assert LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32").fast_levers == []


def test_every_lever_draws_the_default_picture(tiny_folder, default_image):
    pipe = LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")
    assert fast.apply_fast(pipe, levers=fast.LEVERS) == [*fast.LEVERS, "vae_tiling>1024"]
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    got = draw(pipe)
    assert np.abs(got - default_image).mean() <= 0.05 and np.abs(got - default_image).max() <= 1
    with pytest.raises(LatentDiffError, match="unknown speed lever 'warp'"):
        fast.apply_fast(pipe, levers=("warp",))


def test_channels_last_keeps_names_and_saves(tiny_folder, tmp_path):
    pipe = LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    fast.channels_last(pipe.unet)
    after = pipe.unet.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    again = LatentDiffusionPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "cl"), dtype="fp32")  # saving makes them contiguous
    assert all(torch.equal(before[k], v) for k, v in again.unet.state_dict().items())


def test_fused_qkv_matches_and_follows_weight_changes(tiny_sd1):
    from latentdiff.models.unet import UNet

    unet = UNet(tiny_sd1.unet.config).eval()
    unet.load_state_dict(tiny_sd1.unet.state_dict())
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        want = unet(x, 300, ctx)
        n = fast.fuse_qkv(unet)
        assert n == sum(1 for name, _ in unet.named_modules() if name.endswith("attn1")) > 0
        got = unet(x, 300, ctx)
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()
        attn = next(m for name, m in unet.named_modules() if name.endswith("attn1"))
        attn.to_k.weight.mul_(1.5)  # an in-place change (LoRA fuse, load_state_dict) must reach the fused weight
        changed = unet(x, 300, ctx)
        fast.unfuse_qkv(unet)
        assert "forward" not in attn.__dict__ and "_qkv_weight" not in attn.__dict__
        assert torch.allclose(changed, unet(x, 300, ctx), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(changed, want, atol=1e-4)
    assert list(unet.state_dict()) == list(tiny_sd1.unet.state_dict())


def test_sequential_offload_is_exact_and_removable(tiny_sd1):
    from latentdiff.models.unet import UNet

    unet = UNet(tiny_sd1.unet.config).eval()
    unet.load_state_dict(tiny_sd1.unet.state_dict())
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad():
        want = unet(x, 10, ctx)
        off = fast.sequential_offload(unet, "cpu")  # on a CPU-only machine device and storage coincide: hooks, same numbers
        holders = [m for m in unet.modules() if any(True for _ in m.parameters(recurse=False))]
        assert len(off.handles) == 1 + 2 * len(holders)  # inputs to the device, then load/unload per weight holder
        assert torch.equal(unet(x, 10, ctx), want)
        off.remove()
        assert not off.handles and torch.equal(unet(x, 10, ctx), want)


def test_pipeline_with_sequential_offload_draws_the_default_picture(tiny_folder, default_image):
    pipe = LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")
    offloads = fast.enable_sequential_offload(pipe, "cpu")
    assert [o.model for o in offloads] == [pipe.unet, pipe.text_encoder, pipe.vae]
    assert np.abs(draw(pipe) - default_image).max() == 0


def test_vae_tiling_places_and_blends_tiles_exactly(tiny_sd1):
    """With a local decoder (1×1 conv, ×8 nearest upsample) tiling must reproduce the untiled image: no seams, no shifts."""
    import copy

    from torch import nn

    vae = copy.deepcopy(tiny_sd1.vae)
    vae.decoder = nn.Sequential(nn.Conv2d(4, 3, 1), nn.Upsample(scale_factor=8, mode="nearest"))
    z = torch.randn(1, 4, 27, 13, generator=torch.Generator().manual_seed(0))  # 216×104 px: uneven tiles both ways
    with torch.no_grad():
        plain = vae.decode(z).sample
        fast.enable_vae_tiling(vae, tile=64)
        tiled = vae.decode(z).sample
    assert tiled.shape == plain.shape == (1, 3, 216, 104)
    assert torch.allclose(tiled, plain, atol=1e-6)


def test_vae_tiling_on_a_real_decoder_keeps_shape_and_picture(tiny_sd1):
    import copy

    vae = copy.deepcopy(tiny_sd1.vae)  # tiling patches the decoder: not on the session fixture
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 20, 12, generator=g)  # 160×96 pixels: 3 tiles down, 2 across at tile 64
    small = torch.randn(1, 4, 8, 8, generator=g)
    try:
        with torch.no_grad():
            plain, plain_small = vae.decode(z).sample, vae.decode(small).sample
            fast.enable_vae_tiling(vae, tile=64)
            tiled, tiled_small = vae.decode(z).sample, vae.decode(small).sample
    finally:
        fast.disable_vae_tiling(vae)
    assert tiled.shape == plain.shape == (1, 3, 160, 96)
    assert torch.equal(tiled_small, plain_small)  # at or under the tile size nothing changes
    # Tiles normalise (GroupNorm) over themselves, so pixels move; on this random decoder the picture still correlates.
    assert torch.corrcoef(torch.stack([tiled.flatten(), plain.flatten()]))[0, 1] > 0.6


@pytest.mark.parametrize("tile, overlap, message", [(100, 0.25, "multiple of 8"), (8, 0.25, "at least 16"), (64, 0.6, "overlap")])
def test_vae_tiling_bad_settings(tiny_sd1, tile, overlap, message):
    with pytest.raises(LatentDiffError, match=message):
        fast.enable_vae_tiling(tiny_sd1.vae.__class__.from_config(tiny_sd1.vae.config), tile=tile, overlap=overlap)


def test_set_threads_checks_input():
    n = torch.get_num_threads()
    assert fast.set_threads(None) == n and fast.set_threads(n) == n
    with pytest.raises(LatentDiffError, match="threads must be positive"):
        fast.set_threads(0)


# -- the harness (benchmarks/): a tiny smoke run, never timing assertions ------------------------------------------------
@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import make_table

    from latentdiff.bench import harness

    return harness, make_table


def test_cli_defaults_are_the_harness_defaults(bench):
    import argparse

    from latentdiff.cli.bench import add_bench_arguments

    harness, _ = bench
    p = argparse.ArgumentParser()
    add_bench_arguments(p)
    assert harness.settings_from_args(p.parse_args([])) == harness.BenchSettings()


def test_harness_smoke_run_writes_valid_json_and_table(bench, tmp_path):
    harness, make_table = bench
    s = harness.BenchSettings(layout="tiny", device="cpu", variants=("ours-fp32-cl", "ours-fp16"), latent=8, height=64, width=64, steps=3,
                              step_repeats=2, decode_repeats=1, memory=False, work_dir=str(tmp_path / "work"), label="smoke",
                              pairs=("ours-fp32:ours-fp32-cl",), pair_rounds=1)
    out = tmp_path / "results" / "smoke.json"
    result = harness.run(s, out)
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result))
    rows = {r["name"]: r for r in data["variants"]}
    assert list(rows) == ["diffusers-fp32", "ours-fp32", "ours-fp32-cl"]  # anchors first; the CUDA-only variant left out on CPU
    m = data["machine"]
    assert m["device"] == "cpu" and {"avx512_bf16", "amx_bf16", "torch_avx512_bf16"} <= set(m["cpu_flags"])
    assert m["torch"] == torch.__version__ and m["threads"] >= 1
    for r in rows.values():
        assert "error" not in r
        assert len(r["unet_step"]["times_s"]) == 2 and r["unet_step"]["median_s"] > 0 and len(r["vae_decode"]["times_s"]) == 1
        assert r["e2e"]["steps"] == 3 and r["image_stats"]["std"] > 5
    assert rows["ours-fp32"]["image_vs_diffusers_fp32"]["max_abs_255"] <= 2  # same weights, same picture as diffusers
    assert rows["ours-fp32-cl"]["image_vs_ours_fp32"]["mean_abs_255"] <= 2  # the fast path draws the same picture
    (pair,) = data["pairs"]
    assert len(pair["a_times_s"]) == len(pair["vae_decode"]["ratios_a_over_b"]) == 1 and pair["max_abs_output_diff"] < 1e-4
    table = make_table.section("smoke.json", data)
    assert "| ours-fp32-cl | fp32 |" in table and "Not a result" in table and "channels-last (U-Net + VAE)" in table
    assert "| ours-fp32 | ours-fp32-cl |" in table
    (tmp_path / "results" / "other.json").write_text('{"runs": [1, 2]}')  # another benchmark's JSON is left alone
    index = tmp_path / "BENCHMARKS.md"
    index.write_text("# Benchmarks\n\nhand-written index\n")
    for _ in range(2):  # the block is appended once, then replaced in place
        make_table.write_table(index, tmp_path / "results")
    text = index.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written index\n") and text.count(make_table.BEGIN) == 1
    assert text.count("## smoke") == 1 and "other.json" not in text


def test_harness_memory_probe_in_a_fresh_process(bench, tmp_path):
    harness, _ = bench
    s = harness.BenchSettings(layout="tiny", device="cpu", height=64, width=64, work_dir=str(tmp_path))
    folder = harness.ensure_model("tiny", 0, tmp_path)
    mem = harness.measure_memory(harness.VARIANTS["ours-fp32"], folder, s)
    assert "error" not in mem, mem
    assert 0 < mem["baseline_rss_mb"] <= mem["loaded_rss_mb"] <= mem["peak_rss_mb"]


def test_bench_cli_checks_input_before_running(capsys):
    assert cli_main(["bench", "--size", "100"]) == 2
    assert capsys.readouterr().err.strip() == "error: --steps and --latent must be positive and --size a positive multiple of 8"


def test_bench_names_a_missing_device_in_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli_main(["bench", "--device", "cuda", "--layout", "tiny", "--work-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "error: device cuda asked for, but no CUDA GPU is available"
    assert cli_main(["bench", "--device", "gpu", "--layout", "tiny", "--work-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown device 'gpu'")
    assert list(tmp_path.iterdir()) == []  # refused before any model was built
