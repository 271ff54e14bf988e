"""LoRA files on disk: read any supported layout, write peft/diffusers or kohya/A1111, training facts in the header."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterable

import torch
from safetensors import safe_open

from ..checkpoints import file_hash
from ..errors import LatentDiffError
from ..fileio import save_safetensors
from .formats import DIFFUSERS_METADATA_KEY, LoraState, detect_format, kohya_component, read_state, to_kohya, to_peft

PEFT_FILE_NAME = "pytorch_lora_weights.safetensors"  # the name diffusers' load_lora_weights looks for in a folder
FORMATS = ("peft", "kohya")
_PREFIX = "latentdiff."


@dataclass
class LoraMetadata:
    """Training facts kept as strings in the safetensors header; mirrored to kohya's `ss_*` keys for other tools."""

    base_model: str = ""            # path or name of the model trained on
    base_model_hash: str = ""       # sha256[:10] of its weights (A1111's "Model hash" for single files)
    kind: str = ""                  # "sd1" or "sd2"
    prediction_type: str = ""       # "epsilon" or "v_prediction"
    rank: int = 0
    alpha: float = 0.0
    targets: str = ""               # comma-separated target names
    steps: int = 0                  # optimizer steps trained
    dataset_size: int = 0           # training images (without regularisation images)
    resolution: int = 0
    extra: dict = field(default_factory=dict)  # any other header entries, kept as read

    def to_header(self) -> dict[str, str]:
        """Our keys plus the kohya keys A1111 / kohya tools show (ss_network_dim, ss_network_alpha, ...)."""
        header = {f"{_PREFIX}{f.name}": str(getattr(self, f.name)) for f in fields(self) if f.name != "extra"}
        header.update({
            "ss_network_module": "networks.lora", "ss_network_dim": str(self.rank), "ss_network_alpha": f"{self.alpha:g}",
            "ss_base_model_version": "sd_v2" if self.kind == "sd2" else "sd_v1", "ss_v2": str(self.kind == "sd2"),
            "ss_sd_model_name": Path(self.base_model).name if self.base_model else "", "ss_sd_model_hash": self.base_model_hash,
            "ss_steps": str(self.steps), "ss_num_train_images": str(self.dataset_size), "ss_resolution": str(self.resolution),
        })
        return header

    @classmethod
    def from_header(cls, header: dict[str, str]) -> "LoraMetadata":
        """Read ours, falling back on kohya's `ss_*` keys; other entries land in `extra`."""
        meta = cls()
        fallback = {"rank": "ss_network_dim", "alpha": "ss_network_alpha", "steps": "ss_steps", "dataset_size": "ss_num_train_images",
                    "base_model_hash": "ss_sd_model_hash", "base_model": "ss_sd_model_name"}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = header.get(_PREFIX + f.name, header.get(fallback.get(f.name, ""), None))
            if raw in (None, "", "None"):
                continue
            try:
                setattr(meta, f.name, type(getattr(meta, f.name))(float(raw)) if f.type in ("int", "float") else raw)
            except ValueError:
                pass  # a foreign tool's odd value: keep the default
        meta.extra = {k: v for k, v in header.items() if not k.startswith(_PREFIX)}
        return meta


@dataclass
class LoraFile:
    """A LoRA read from disk."""

    state: LoraState              # module key → LoraModule (true alpha)
    format: str                   # "peft", "kohya" or "diffusers_old"
    metadata: LoraMetadata
    path: str = ""


def resolve_path(path: str | os.PathLike) -> Path:
    """A .safetensors file, or a folder holding diffusers' pytorch_lora_weights.safetensors."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / PEFT_FILE_NAME).is_file():
            return p / PEFT_FILE_NAME
        found = sorted(p.glob("*.safetensors"))
        if len(found) != 1:
            raise LatentDiffError(f"{p} holds {len(found)} .safetensors files; name the LoRA file itself")
        return found[0]
    if not p.is_file():
        raise LatentDiffError(f"no such LoRA file: {p}")
    if p.suffix.lower() != ".safetensors":
        raise LatentDiffError(f"{p}: only .safetensors LoRA files are read (pickled .pt/.ckpt files can run code)")
    return p


def read_lora(path: str | os.PathLike, module_keys: Iterable[str] | None = None, aliases: dict[str, str] | None = None) -> LoraFile:
    """Read a LoRA in any supported layout; kohya files need the model's module keys (see attach.component_modules)."""
    p = resolve_path(path)
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own types for bad headers and short files
        raise LatentDiffError(f"{p} is not a valid safetensors file ({str(e).splitlines()[0][:120]})") from None
    try:
        state, fmt = read_state(tensors, header, module_keys, aliases)
    except LatentDiffError as e:
        raise LatentDiffError(f"{p.name}: {e}") from None
    return LoraFile(state, fmt, LoraMetadata.from_header(header), str(p))


_LORA_KEY_MARKS = ("lora_unet_", "lora_te", ".lora_A.", ".lora_B.", ".lora.down.", ".lora_down.", "_lora.down.",
                   ".lora_linear_layer.", ".hada_", ".lokr_")


def is_lora_file(path: str | os.PathLike) -> bool:
    """True for a .safetensors file (or a folder with diffusers' LoRA file) whose tensor names are a LoRA's."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "model_index.json").is_file() or not (p / PEFT_FILE_NAME).is_file():
            return False
        p = p / PEFT_FILE_NAME
    if not p.is_file() or p.suffix.lower() != ".safetensors":
        return False
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            keys = list(f.keys())
    except Exception:  # not a readable safetensors file: the model loader says why
        return False
    return bool(keys) and all(any(mark in k for mark in _LORA_KEY_MARKS) or k.endswith(".alpha") for k in keys)


@dataclass
class LoraSummary:
    """What `latentdiff info` says about a LoRA file, read without a model."""

    format: str                      # "kohya", "peft" or "diffusers_old"
    modules: dict[str, int]          # component ("unet", "text_encoder") → adapted layers
    ranks: Counter                   # rank → layers
    alphas: Counter | None           # alpha → layers; None when the file records none (then alpha = rank, scale 1)
    metadata: LoraMetadata


def summarize_lora(path: str | os.PathLike) -> LoraSummary:
    """Rank, layer count and alpha of a LoRA file; kohya names are counted as written (no model needed)."""
    p = resolve_path(path)
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise LatentDiffError(f"{p} is not a valid safetensors file ({str(e).splitlines()[0][:120]})") from None
    try:
        fmt = detect_format(tensors)
        if fmt == "kohya":
            downs = {k.split(".", 1)[0]: v for k, v in tensors.items() if k.endswith(".lora_down.weight")}
            alphas = {k.split(".", 1)[0]: float(v.item()) for k, v in tensors.items() if k.endswith(".alpha")}
            component = {name: kohya_component(name) for name in downs}
            ranks = Counter(int(v.shape[0]) for v in downs.values())
            known = Counter(alphas[n] for n in downs if n in alphas) if alphas else None
        else:
            state, _ = read_state(tensors, header)
            component = {k: k.split(".", 1)[0] for k in state}
            ranks = Counter(m.rank for m in state.values())
            recorded = DIFFUSERS_METADATA_KEY in header or any(k.endswith(".alpha") for k in tensors)
            known = Counter(m.alpha for m in state.values()) if recorded else None
    except LatentDiffError as e:
        raise LatentDiffError(f"{p.name}: {e}") from None
    return LoraSummary(fmt, dict(Counter(component.values())), ranks, known, LoraMetadata.from_header(header))


def describe_lora(path: str | os.PathLike) -> list[str]:
    """`latentdiff info` lines for a LoRA file."""
    s = summarize_lora(path)
    def spread(c: Counter) -> str:
        return ", ".join(f"{k:g}" + (f" ({n} layers)" if len(c) > 1 else "") for k, n in sorted(c.items()))
    names = {"kohya": "kohya/A1111", "peft": "peft/diffusers", "diffusers_old": "diffusers (lora.down/up)"}
    lines = [f"LoRA             {resolve_path(path)}", f"format           {names[s.format]}",
             f"modules          {sum(s.modules.values())} ({', '.join(f'{c} {n}' for c, n in sorted(s.modules.items()))})",
             f"rank             {spread(s.ranks)}"]
    if s.alphas is None:
        lines.append("alpha            not recorded (taken as the rank: scale 1)")
    else:
        lines.append(f"alpha            {spread(s.alphas)}")
    m = s.metadata
    if m.base_model or m.kind:
        lines.append(f"trained on       {m.base_model or '?'}{f' ({m.kind.upper()})' if m.kind else ''}"
                     f"{f', {m.steps} steps' if m.steps else ''}")
    return lines


def save_lora(state: LoraState, path: str | os.PathLike, *, format: str = "peft", metadata: LoraMetadata | None = None,
              dtype: torch.dtype | None = None, unet: torch.nn.Module | None = None) -> Path:
    """Write atomically as peft/diffusers (`unet.…lora_A.weight` + rank/alpha config) or kohya (`lora_unet_…` + true alpha);
    kohya for an SDXL `unet` in sd-scripts' layout (SGM U-Net names, lora_te1_/lora_te2_)."""
    if format not in FORMATS:
        raise LatentDiffError(f"unknown LoRA format {format!r}; choose one of {', '.join(FORMATS)}")
    if not state:
        raise LatentDiffError("refusing to write an empty LoRA")
    if dtype is not None:
        state = {k: type(m)(m.down.to(dtype), m.up.to(dtype), m.alpha, m.source_key) for k, m in state.items()}
    header = {"format": "pt", **(metadata.to_header() if metadata else {})}
    if format == "peft":
        tensors, extra = to_peft(state)
        header.update(extra)
    else:
        from .sdxl import sgm_names, to_kohya_sdxl

        tensors = to_kohya_sdxl(state, unet) if unet is not None and sgm_names(unet) else to_kohya(state)
    return save_safetensors(tensors, path, metadata=header)  # atomic, with the usual file mode (fileio.publish)


def weights_hash(model_path: str | os.PathLike) -> str:
    """sha256[:10] of a model's weights: the file itself, or a diffusers folder's U-Net weights file."""
    p = Path(model_path)
    if p.is_dir():
        candidates = sorted((p / "unet").glob("diffusion_pytorch_model*.safetensors")) + sorted((p / "unet").glob("*.bin"))
        if not candidates:
            return ""
        p = candidates[0]
    return file_hash(p) if p.is_file() else ""
