"""Data A/B setup: give an arm the shipped model's VAE as its trained VAE, and its latents at the shipped scale.

Both arms then train the U-Net on latents of one fixed VAE and one fixed scaling factor (the shipped model's
0.4354), so the extra images change only the data the U-Net sees, not its latent space or the latents' scale.
Run from the folder holding data/ and runs/ (outside the repository):

    python benchmarks/default_model/data_ab/setup.py benchmarks/default_model/data_ab/3d.yaml
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from latentdiff.training.checkpoints import RunFolder
from latentdiff.training.config import load_config
from latentdiff.data.pixels import PixelCache
from latentdiff.training.stages import encode_latents, load_trained_vae, vae_arch

ASSET = Path(__file__).resolve().parents[3] / "latentdiff" / "assets" / "default" / "vae"


def install_vae(cfg) -> None:
    """The shipped VAE (fp16 on disk) as the arm's vae-stage EMA checkpoint, in fp32."""
    state = load_file(str(ASSET / "diffusion_pytorch_model.safetensors"))

    def write(folder: Path) -> None:
        save_file({f"vae.{k}": v.float().contiguous() for k, v in state.items()}, str(folder / "ema.safetensors"))
        (folder / "arch.json").write_text(json.dumps(vae_arch(cfg)))
        torch.save({"step": 0, "note": "shipped VAE installed by data_ab/setup.py"}, folder / "state.pt")

    RunFolder(Path(cfg.output_dir) / "vae").save(0, write)


def main() -> None:
    """Install the VAE, encode the arm's training latents and pin their scale to the shipped one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    cfg = load_config(parser.parse_args().config)
    install_vae(cfg)
    scale = json.loads((ASSET / "config.json").read_text())["scaling_factor"]
    cache = PixelCache.load_or_build(cfg.data, Path(cfg.output_dir) / f"pixels-{cfg.data.resolution}.pt")
    moments, own = encode_latents(cfg, cache, load_trained_vae(cfg))
    path = Path(cfg.output_dir) / "unet" / "latents.pt"
    blob = torch.load(path, weights_only=False)
    blob["scale"] = scale
    torch.save(blob, path)
    styles = {}
    for r in cache.records:
        styles[r.style] = styles.get(r.style, 0) + 1
    print(f"{cfg.output_dir}: {len(cache)} training images {styles}; latents {tuple(moments.shape)}; "
          f"scale pinned to {scale:.5f} (this data's own: {own:.5f})")


if __name__ == "__main__":
    main()
