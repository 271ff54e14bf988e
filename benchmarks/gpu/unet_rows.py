"""Lease rows for features other helpers build: SDXL 1024² and ControlNet cost per step, U-Net level, ours vs diffusers;
SDXL LoRA training memory (ours alone).

Each row checks that the feature exists in this checkout and otherwise writes {"skipped": "not yet built: ..."} (and
prints the line), so the lease plan can carry the slot before the feature lands. Random weights, loaded into ours and
into diffusers' class by the same names; CFG batch 2; CUDA events, or perf_counter on the CPU (`--dry`: tiny sizes).

    python benchmarks/gpu/unet_rows.py sdxl|sdxl_lora|controlnet --device cuda --out X.json [--dry]
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import torch


def timed(fn, device: torch.device, warmup: int, repeats: int) -> dict:
    """latentdiff.bench's timer (CUDA events or perf_counter), keyword-adapted for the rows below."""
    from latentdiff.bench.harness import timed as bench_timed

    return bench_timed(fn, warmup=warmup, repeats=repeats, device=device)


def peak(device: torch.device, fn) -> float | None:
    """GPU memory high-water mark (MB) of one call, weights included; None on the CPU."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def load_same(ref: torch.nn.Module, ours: torch.nn.Module) -> str:
    """Copy our random weights into diffusers' model by name; say whether every name matched."""
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    return "same weights" if not (missing or unexpected) else f"names differ ({len(missing)} missing, {len(unexpected)} unexpected)"


def sdxl_config(dry: bool) -> tuple[dict, int, int, int] | dict:
    """(diffusers U-Net config, latent size, context width, pooled width) of SDXL base, toy widths when dry; or a skip."""
    from latentdiff.models.unet import UNet

    try:
        from latentdiff.checkpoints.presets import read_preset

        cfg = dict(read_preset("sdxl_base")["unet"])
    except Exception as e:  # no preset yet
        return {"skipped": f"not yet built: no sdxl_base preset ({str(e).splitlines()[0][:120]})"}
    if "added_cond_kwargs" not in inspect.signature(UNet.forward).parameters:
        return {"skipped": "not yet built: our U-Net takes no added_cond_kwargs (SDXL text_time conditioning)"}
    latent, ctx, pooled = 128, cfg.get("cross_attention_dim", 2048), 1280
    if dry:  # the same block pattern at toy widths
        pooled, t_dim = 32, 8
        cfg.update(block_out_channels=[32, 64, 64], transformer_layers_per_block=[1, 1, 1][:len(cfg["down_block_types"])],
                   cross_attention_dim=64, attention_head_dim=[2, 4, 4], norm_num_groups=8, addition_time_embed_dim=t_dim,
                   projection_class_embeddings_input_dim=6 * t_dim + pooled, sample_size=16, layers_per_block=1)
        latent, ctx = 8, 64
    return cfg, latent, ctx, pooled


def sdxl_row(device: torch.device, dtype: torch.dtype, dry: bool) -> dict:
    """SDXL base U-Net CFG step at 1024² (latent 128), ours vs diffusers' UNet2DConditionModel."""
    from latentdiff.models.unet import UNet, UNetConfig

    got = sdxl_config(dry)
    if isinstance(got, dict):
        return got
    cfg, latent, ctx, pooled = got
    from diffusers import UNet2DConditionModel

    ours = UNet(UNetConfig.from_diffusers(cfg)).eval()
    ref = UNet2DConditionModel.from_config({k: v for k, v in cfg.items() if not k.startswith("_")}).eval()
    note = load_same(ref, ours)
    ours, ref = ours.to(device, dtype), ref.to(device, dtype)
    g = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(2, 4, latent, latent, generator=g).to(device, dtype)           # (2, 4, h, w): [uncond; cond]
    context = torch.randn(2, 77, ctx, generator=g).to(device, dtype)                 # (2, 77, D)
    added = {"text_embeds": torch.randn(2, pooled, generator=g).to(device, dtype),   # (2, P) pooled text
             "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2).to(device, dtype)}  # (2, 6)
    t = torch.tensor(500, device=device)
    steps = {"ours": lambda: ours(x, t, context, added_cond_kwargs=added),
             "diffusers": lambda: ref(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample}
    return run_pair(steps, device, note, f"SDXL base U-Net CFG step, latent {latent}² ({latent * 8}² image)")


def sdxl_lora_row(device: torch.device, dtype: torch.dtype, dry: bool) -> dict:
    """SDXL LoRA training memory at 1024² batch 1 (what train-lora holds on the GPU once latents and text are cached):
    frozen U-Net in fp16, rank-32 LoRA on attention + proj in fp32, gradient checkpointing, AdamW; peak MB and s/step."""
    from latentdiff.lora.attach import add_trainable, component_modules, find_targets
    from latentdiff.models.unet import UNet, UNetConfig

    got = sdxl_config(dry)
    if isinstance(got, dict):
        return got
    cfg, latent, ctx, pooled = got
    with torch.device(device):  # built where it runs: 2.6B parameters initialise in seconds on the GPU
        unet = UNet(UNetConfig.from_diffusers(cfg))
    unet = unet.to(dtype).requires_grad_(False)
    keys = find_targets(component_modules(unet), "unet", ["attention", "proj"])
    params = add_trainable(unet, None, keys, rank=32, alpha=32.0, adapter="bench")
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    unet.enable_gradient_checkpointing()
    unet.train()
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(1, 4, latent, latent, generator=g).to(device, dtype)            # (1, 4, h, w)
    context = torch.randn(1, 77, ctx, generator=g).to(device, dtype)                  # (1, 77, 2048)
    added = {"text_embeds": torch.randn(1, pooled, generator=g).to(device, dtype),    # (1, 1280)
             "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]]).to(device, dtype)}  # (1, 6)
    t = torch.tensor([500], device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = unet(x, t, context, added_cond_kwargs=added).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # AdamW's state exists from here on, as in a run
    mb = peak(device, step)
    r = timed(step, device, 1, 2 if dry else 5)
    return {"what": f"SDXL LoRA training step, latent {latent}² ({latent * 8}² image), batch 1, rank 32, gradient checkpointing",
            "lora_params": sum(p.numel() for p in params), "gpu_peak_mb": mb, "s_per_step": r["median_s"], "timing": r}


def controlnet_row(device: torch.device, dtype: torch.dtype, dry: bool) -> dict:
    """SD1.5 U-Net CFG step at 512² with one ControlNet vs without, ours and diffusers'."""
    from latentdiff.checkpoints.presets import read_preset
    from latentdiff.models.unet import UNet, UNetConfig

    try:
        from latentdiff.models.controlnet import ControlNet, ControlNetConfig
    except ImportError as e:
        return {"skipped": f"not yet built: no latentdiff.models.controlnet ({e})"}
    if "down_block_additional_residuals" not in inspect.signature(UNet.forward).parameters:
        return {"skipped": "not yet built: our U-Net takes no ControlNet residuals"}
    cfg = dict(read_preset("sd15")["unet"])
    latent = 64
    if dry:
        cfg.update(block_out_channels=[32, 64, 64, 64], attention_head_dim=2, cross_attention_dim=32, norm_num_groups=8,
                   layers_per_block=1)
        latent = 8
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet_cfg = UNetConfig.from_diffusers(cfg)
    ours, cn = UNet(unet_cfg).eval(), ControlNet(ControlNetConfig.for_unet(unet_cfg)).eval()
    ref = UNet2DConditionModel.from_config({k: v for k, v in cfg.items() if not k.startswith("_")}).eval()
    ref_cn = ControlNetModel.from_unet(ref).eval()
    note = f"U-Net {load_same(ref, ours)}; ControlNet {load_same(ref_cn, cn)}"
    ours, cn, ref, ref_cn = (m.to(device, dtype) for m in (ours, cn, ref, ref_cn))
    g = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(2, 4, latent, latent, generator=g).to(device, dtype)                    # (2, 4, h, w)
    context = torch.randn(2, 77, cfg["cross_attention_dim"], generator=g).to(device, dtype)  # (2, 77, D)
    image = torch.rand(2, 3, latent * 8, latent * 8, generator=g).to(device, dtype)          # (2, 3, H, W) control image
    t = torch.tensor(500, device=device)

    def ours_cn():
        down, mid = cn(x, t, context, image)
        return ours(x, t, context, down_block_additional_residuals=down, mid_block_additional_residual=mid)

    def ref_step_cn():
        down, mid = ref_cn(x, t, encoder_hidden_states=context, controlnet_cond=image, return_dict=False)
        return ref(x, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                   mid_block_additional_residual=mid).sample

    steps = {"ours": lambda: ours(x, t, context), "ours+controlnet": ours_cn,
             "diffusers": lambda: ref(x, t, encoder_hidden_states=context).sample, "diffusers+controlnet": ref_step_cn}
    return run_pair(steps, device, note, f"SD1.5 U-Net CFG step ± one ControlNet, latent {latent}² ({latent * 8}² image)")


def run_pair(steps: dict, device: torch.device, note: str, what: str) -> dict:
    out = {"what": what, "weights": note, "rows": {}}
    with torch.inference_mode():
        for name, fn in steps.items():
            out["rows"][name] = {**timed(fn, device, warmup=2, repeats=8 if device.type == "cuda" else 2),
                                 "peak_mb": peak(device, fn)}
            print(f"{name}: {out['rows'][name]['median_s']:.4f} s", file=sys.stderr, flush=True)
    r = out["rows"]
    out["ratio_ours_vs_diffusers"] = round(r["ours"]["median_s"] / r["diffusers"]["median_s"], 3)
    if "ours+controlnet" in r:
        out["controlnet_cost_ours"] = round(r["ours+controlnet"]["median_s"] / r["ours"]["median_s"], 3)
        out["controlnet_cost_diffusers"] = round(r["diffusers+controlnet"]["median_s"] / r["diffusers"]["median_s"], 3)
        out["ratio_with_controlnet"] = round(r["ours+controlnet"]["median_s"] / r["diffusers+controlnet"]["median_s"], 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("row", choices=["sdxl", "sdxl_lora", "controlnet"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dry", action="store_true", help="tiny widths on the CPU in fp32: checks the script, measures nothing")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    device = torch.device(a.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    row = {"sdxl": sdxl_row, "sdxl_lora": sdxl_lora_row, "controlnet": controlnet_row}[a.row]
    try:
        result = row(device, dtype, a.dry)
    except Exception as e:  # a failure is a result too: say it and keep the plan going
        result = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    result.update(row_name=a.row, device=str(device), dtype=str(dtype), dry=a.dry, torch=torch.__version__)
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(result.get("skipped") or result.get("error") or (f"{a.row}: peak {result['gpu_peak_mb']} MB, {result['s_per_step']:.3f} s/step"
          if a.row == "sdxl_lora" else f"{a.row}: ours ÷ diffusers {result['ratio_ours_vs_diffusers']}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
