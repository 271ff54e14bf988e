"""Where the shipped YAML presets and assets live, and reading them (local files only, never a hub lookup)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from ..errors import LatentDiffError

PACKAGE_DIR = Path(__file__).resolve().parents[1]
ASSETS_DIR = PACKAGE_DIR / "assets"
# The SD presets a single file is loaded with live inside the package (package data: wheels carry them); the
# top-level configs/ holds recipes (training, LoRA, U-Net variants) that users pass by path.
CONFIG_DIR = PACKAGE_DIR / "configs"
PRESET_SECTIONS = ("kind", "tokenizer", "unet", "vae", "text_encoder", "scheduler")


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML file whose top level is a mapping; LatentDiffError for a missing or malformed file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LatentDiffError(f"no such config file: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise LatentDiffError(f"{path} is not a readable YAML file: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise LatentDiffError(f"{path} does not hold a YAML mapping")
    return data


def preset_path(name: str | os.PathLike) -> Path:
    """A preset by name ("sd15" → latentdiff/configs/sd15.yaml) or by path to a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        return path
    return CONFIG_DIR / f"{name}.yaml"


def read_preset(name: str | os.PathLike) -> dict:
    """A component preset (kind, tokenizer, unet, vae, text_encoder, scheduler), each section checked present."""
    path = preset_path(name)
    data = read_yaml(path)
    missing = [s for s in PRESET_SECTIONS if s not in data]
    if missing:
        raise LatentDiffError(f"{path} lacks the section '{missing[0]}' of a model preset")
    return data
