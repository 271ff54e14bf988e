"""Cold-start loaders: the VAE and CLIP text encoder of a diffusers folder built from config.json on the meta device and
filled from their one plain safetensors file, without from_pretrained's search, checks and conversions.

They give what `AutoencoderKL.from_pretrained` / `CLIPTextModel.from_pretrained` give (same classes, configs, tensors and
dtypes: diffusers upcasts the VAE to fp32, transformers keeps the file's dtype; tests/test_cold_start.py checks it), and
return None for anything else (sharded or fp16-variant weights, pickles, legacy key names), so the caller falls back to
the library's loader. Measured on the embedded model (benchmarks/cold_start.py): VAE 0.10 → 0.03 s, text encoder
0.08 → 0.006 s of CPU time.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .loader import _load_text_state, read_safetensors

# the embedded default model's tokenizer.json holds the same BPE tables and special tokens as the bundled SD1
# vocab.json + merges.txt (tests/test_cold_start.py compares them entry by entry); those load 0.36 → 0.06 s of CPU
DEFAULT_TOKENIZER = Path(__file__).resolve().parent.parent / "assets" / "default" / "tokenizer"


def _plain_files(folder: Path, stem: str) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """(config, state) of a folder with config.json and exactly one `{stem}.safetensors` weights file, else None."""
    weights, config = folder / f"{stem}.safetensors", folder / "config.json"
    others = [p for p in folder.glob(f"{stem}*") if p != weights]
    if not (weights.is_file() and config.is_file()) or others:
        return None
    try:
        cfg = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # the library's loader words the error
    return cfg, read_safetensors(weights)


def _fits(model: torch.nn.Module, state: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> bool:
    """True when the file's keys and shapes are exactly the model's (less non-persistent `skip` buffers)."""
    want = {k: v.shape for k, v in model.state_dict().items() if not k.endswith(skip)}
    return set(want) == set(state) and all(tuple(state[k].shape) == tuple(s) for k, s in want.items())


def direct_vae(folder: Path):
    """diffusers' AutoencoderKL (fp32, as from_pretrained) from `vae/`, or None when the library must load it."""
    files = _plain_files(folder, "diffusion_pytorch_model")
    if files is None:
        return None
    from diffusers import AutoencoderKL

    cfg, state = files
    if cfg.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        return None
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(cfg)
    if not _fits(vae, state):
        return None  # e.g. pre-0.14 attention names, which from_pretrained renames
    vae.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    vae.register_to_config(_name_or_path=str(folder))
    return vae.eval()


def direct_text_encoder(folder: Path):
    """transformers' CLIPTextModel (in the file's dtype, as from_pretrained) from `text_encoder/`, or None."""
    files = _plain_files(folder, "model")
    if files is None:
        return None
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg, state = files
    if cfg.get("model_type") != "clip_text_model" or cfg.get("architectures", ["CLIPTextModel"]) != ["CLIPTextModel"]:
        return None
    config = CLIPTextConfig.from_dict(cfg)
    config.name_or_path = str(folder)
    with torch.device("meta"):
        model = CLIPTextModel(config)
    if not _fits(model, state, skip=("position_ids",)):
        return None
    _load_text_state(model, state)
    return model.eval()
