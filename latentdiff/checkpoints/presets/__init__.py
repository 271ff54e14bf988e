"""The SD1/SD2/SDXL component presets single-file loading reads (the YAML files beside this module, package data), and
where the shipped assets live; local files only, never a hub lookup."""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import LatentDiffError
from ...fileio import read_yaml

PACKAGE_DIR = Path(__file__).resolve().parents[2]
ASSETS_DIR = PACKAGE_DIR / "assets"
# The SD presets a single file is loaded with live beside this module (package data: wheels carry them); the
# top-level configs/ holds recipes (training, LoRA, U-Net variants) that users pass by path.
PRESET_DIR = Path(__file__).resolve().parent
PRESET_SECTIONS = ("kind", "tokenizer", "unet", "vae", "text_encoder", "scheduler")


def preset_path(name: str | os.PathLike) -> Path:
    """A preset by name ("sd15" → latentdiff/checkpoints/presets/sd15.yaml) or by path to a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        return path
    return PRESET_DIR / f"{name}.yaml"


def read_preset(name: str | os.PathLike) -> dict:
    """A component preset (kind, tokenizer, unet, vae, text_encoder, scheduler), each section checked present."""
    path = preset_path(name)
    data = read_yaml(path)
    missing = [s for s in PRESET_SECTIONS if s not in data]
    if missing:
        raise LatentDiffError(f"{path} lacks the section '{missing[0]}' of a model preset")
    return data
