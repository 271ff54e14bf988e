"""The profiler: FLOPs against hand counts, the live-tensor peak, config files, and the `profile` command's outputs."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from latentdiff.cli import main
from latentdiff.errors import LatentDiffError
from latentdiff.models.dit import DiTConfig
from latentdiff.models.unet import UNetConfig
from latentdiff.profiling import (LiveTensorPeak, ProfileSettings, build_model, count_flops, example_inputs,
                                  load_arch_config, profile_one)

REPO = Path(__file__).resolve().parents[1]


def conv(cin, cout, k, hw):
    return 2 * cin * cout * k * k * hw


def linear(n, din, dout):
    return 2 * n * din * dout


def resnet(cin, cout, hw, temb):
    return conv(cin, cout, 3, hw) + linear(1, temb, cout) + conv(cout, cout, 3, hw) + (conv(cin, cout, 1, hw) if cin != cout else 0)


def attention(n, m, dim, context_dim):
    """q, k, v, out projections plus QKᵀ and (softmax)V, summed over heads."""
    return linear(n, dim, dim) + 2 * linear(m, context_dim, dim) + 2 * (2 * n * m * dim) + linear(n, dim, dim)


def transformer2d(c, n, tokens, ctx):
    return (conv(c, c, 1, n) + attention(n, n, c, c) + attention(n, tokens, c, ctx)
            + linear(n, c, 8 * c) + linear(n, 4 * c, c) + conv(c, c, 1, n))


def test_unet_flops_match_a_hand_count():
    # one level of 16 channels, 8×8 latents (64 pixels), 5 text tokens of width 8: every layer written out
    cfg = UNetConfig(block_out_channels=(16,), layers_per_block=1, attention_levels=(True,), num_heads=2,
                     cross_attention_dim=8, norm_num_groups=8, sample_size=8)
    hw, t, temb = 64, 5, 64
    hand = (linear(1, 16, temb) + linear(1, temb, temb)          # timestep MLP
            + conv(4, 16, 3, hw)                                  # conv_in
            + resnet(16, 16, hw, temb) + transformer2d(16, hw, t, 8)  # down level
            + 2 * resnet(16, 16, hw, temb) + transformer2d(16, hw, t, 8)  # mid block
            + 2 * (resnet(32, 16, hw, temb) + transformer2d(16, hw, t, 8))  # up level: ResNets see the concatenated skip
            + conv(16, 4, 3, hw))                                 # conv_out
    flops, params = count_flops(cfg, batch=1, size=8, tokens=5)
    assert flops == hand
    assert count_flops(cfg, batch=3, size=8, tokens=5)[0] == 3 * hand
    assert params == sum(p.numel() for p in build_model(cfg).parameters())


def test_dit_flops_match_a_hand_count():
    d, n, t, ctx = 32, 16, 5, 8  # 8×8 latents in 2×2 patches: 16 tokens
    cfg = DiTConfig(hidden_size=d, depth=1, num_heads=2, cross_attention_dim=ctx, sample_size=8)
    hand = (conv(4, d, 2, n) + linear(1, 256, d) + linear(1, d, d)               # patchify, timestep MLP
            + linear(1, d, 6 * d) + attention(n, n, d, d) + attention(n, t, d, ctx)  # adaLN, self, cross
            + linear(n, d, 4 * d) + linear(n, 4 * d, d)                          # MLP
            + linear(1, d, 2 * d) + linear(n, d, 2 * 2 * 4))                     # final adaLN and patch projection
    assert count_flops(cfg, batch=1, size=8, tokens=t)[0] == hand


def test_meta_counting_sees_the_attention_the_cpu_kernel_hides():
    cfg = UNetConfig(block_out_channels=(16,), layers_per_block=1, attention_levels=(True,), num_heads=2,
                     cross_attention_dim=8, norm_num_groups=8, sample_size=8)
    model = build_model(cfg)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*example_inputs(cfg, 1, 8, 5))
    meta = count_flops(cfg, 1, 8, 5)[0]
    n_transformers = 4  # down, mid, two up
    sdpa = n_transformers * (2 * (2 * 64 * 64 * 16) + 2 * (2 * 64 * 5 * 16))  # QKᵀ and AV, self and cross
    assert meta - counter.get_total_flops() == sdpa


def test_sd15_reference_cost_from_its_diffusers_config():
    name, cfg, _ = load_arch_config(REPO / "latentdiff" / "checkpoints" / "presets" / "sd15.yaml")
    flops, params = count_flops(cfg, batch=1, size=64, tokens=77)
    assert name == "sd15" and params == 859_520_964
    assert round(flops / 1e12, 3) == 0.803  # DESIGN.md's reference: 0.803 TFLOP per sample at 64×64


def test_live_tensor_peak_counts_what_is_alive_at_once():
    with torch.no_grad(), LiveTensorPeak() as tracker:
        x = torch.zeros(256, 256)      # 256 KiB
        y = x + 1                      # 512 KiB alive
        z = y.view(-1)                 # a view: no new storage
        del x
        w = z * 2                      # x freed first: still 512 KiB
        del y, z, w
    assert tracker.peak == 2 * 256 * 256 * 4


def test_profile_one_measures_latency_and_memory():
    cfg = UNetConfig(block_out_channels=(16, 32), layers_per_block=1, attention_levels=(False, True), num_heads=2,
                     cross_attention_dim=8, norm_num_groups=8, sample_size=8)
    row = profile_one("tiny", cfg, ProfileSettings(batch=2, tokens=5, warmup=1, repeats=2))
    assert row.arch == "unet" and row.batch == 2 and row.latent == [8, 8] and row.device == "cpu"
    assert row.flops == count_flops(cfg, 2, 8, 5)[0]
    assert 0 < row.latency_min_ms <= row.latency_ms
    output_mb = 2 * 4 * 8 * 8 * 4 / 2**20
    first_conv_mb = 2 * 16 * 8 * 8 * 4 / 2**20
    assert output_mb + first_conv_mb <= row.peak_activation_mb < 10
    assert row.gpu_peak_mb is None
    with pytest.raises(LatentDiffError, match="unknown dtype"):
        profile_one("tiny", cfg, ProfileSettings(dtype="fp8"))


def test_config_files_load(tmp_path):
    (tmp_path / "a.yaml").write_text("description: small\nunet: {dim: 16, dim_mults: [1, 2], num_heads: 2, norm_num_groups: 8}\n")
    (tmp_path / "b.yaml").write_text("name: tiny-dit\ndit: {hidden_size: 32, depth: 1, num_heads: 2}\n")
    (tmp_path / "both.yaml").write_text("unet: {}\ndit: {}\n")
    (tmp_path / "typo.yaml").write_text("unet: {downsampel: maxpool}\n")
    (tmp_path / "broken.yaml").write_text("unet: [\n")
    name, cfg, desc = load_arch_config(tmp_path / "a.yaml")
    assert (name, desc, cfg.block_out_channels, cfg.level_attention) == ("a", "small", (16, 32), ("linear", "full"))
    name, cfg, _ = load_arch_config(tmp_path / "b.yaml")
    assert name == "tiny-dit" and isinstance(cfg, DiTConfig) and cfg.depth == 1
    for bad, msg in [("both.yaml", "exactly one"), ("typo.yaml", "unknown U-Net config key 'downsampel'"),
                     ("broken.yaml", "not valid YAML"), ("missing.yaml", "no such config file")]:
        with pytest.raises(LatentDiffError, match=msg):
            load_arch_config(tmp_path / bad)


def test_shipped_presets_load_and_count():
    presets = sorted((REPO / "configs").glob("unet-*.yaml")) + sorted((REPO / "configs").glob("dit-*.yaml"))
    assert len(presets) >= 6
    for path in presets:
        name, cfg, desc = load_arch_config(path)
        with torch.device("meta"):
            model = build_model(cfg)  # every variant's forward is exercised in test_variants.py
        assert sum(p.numel() for p in model.parameters()) > 0 and desc, path.name
    base, dit = (load_arch_config(REPO / "configs" / f"{n}-base.yaml")[1] for n in ("unet", "dit"))
    (base_flops, base_params), (dit_flops, dit_params) = count_flops(base), count_flops(dit)
    assert abs(dit_params / base_params - 1) < 0.05  # the DiT preset is the U-Net's size
    assert abs(dit_flops / base_flops - 1) < 0.15


def test_profile_command_writes_table_json_and_chart(tmp_path, capsys):
    (tmp_path / "u.yaml").write_text("unet: {block_out_channels: [16, 32], layers_per_block: 1, attention_levels: [false, true],"
                                     " num_heads: 2, cross_attention_dim: 8, norm_num_groups: 8, sample_size: 8}\n")
    (tmp_path / "d.yaml").write_text("dit: {hidden_size: 32, depth: 1, num_heads: 2, cross_attention_dim: 8, sample_size: 8}\n")
    out = tmp_path / "out"
    out.mkdir()
    code = main(["profile", str(tmp_path / "u.yaml"), str(tmp_path / "d.yaml"), "--tokens", "5", "--warmup", "0", "--repeats", "1",
                 "--json", str(out / "p.json"), "--markdown", str(out / "p.md"), "--chart", str(out / "p.png")])
    assert code == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("| config | arch | params (M) | GFLOP/fwd")
    assert "| u | unet |" in table and "| d | dit |" in table
    assert (out / "p.md").read_text() == table
    doc = json.loads((out / "p.json").read_text())
    assert [r["name"] for r in doc["rows"]] == ["u", "d"] and doc["settings"]["tokens"] == 5
    assert doc["rows"][1]["flops"] == count_flops(DiTConfig(hidden_size=32, depth=1, num_heads=2, cross_attention_dim=8,
                                                             sample_size=8), 1, 8, 5)[0]
    assert all(r["latency_ms"] > 0 for r in doc["rows"])
    with Image.open(out / "p.png") as img:
        assert img.size == (900, 600)
    assert sorted(p.name for p in out.iterdir()) == ["p.json", "p.md", "p.png"]  # no temp files left behind


def test_profile_command_errors_are_one_line(tmp_path, capsys):
    assert main(["profile", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: no such config file: {tmp_path / 'nope.yaml'}"
    (tmp_path / "u.yaml").write_text("unet: {dim: 16, dim_mults: [1], num_heads: 2, norm_num_groups: 8}\n")
    assert main(["profile", str(tmp_path / "u.yaml"), "--flops-only", "--chart", str(tmp_path / "c.png")]) == 2
    assert "--chart needs latencies" in capsys.readouterr().err


def test_line_chart_with_log_axis(tmp_path):
    from latentdiff.charts import draw_chart

    series = [{"label": "a", "x": [10, 20, 30], "y": [0.8, 0.2, 0.11]}, {"label": "b", "x": [10, 20, 30], "y": [0.5, 0.3, 0.1]}]
    path = draw_chart(series, tmp_path / "c.png", title="loss", xlabel="step", ylabel="loss", log_y=True, size=(400, 300))
    with Image.open(path) as img:
        assert img.size == (400, 300)
        colors = {c for _, c in img.getcolors(maxcolors=100000)}
    assert (31, 119, 180) in colors and (255, 127, 14) in colors  # both series drawn in their colours
    with pytest.raises(LatentDiffError, match="nothing to chart"):
        draw_chart([], tmp_path / "d.png", title="", xlabel="", ylabel="")
