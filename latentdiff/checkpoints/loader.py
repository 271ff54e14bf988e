"""Load the four components of a latent diffusion model from a local path (saving them is checkpoints/save.py)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..defaults import GENERATION_CONFIG
from ..errors import LatentDiffError
from ..models.unet import UNet, UNetConfig

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass
class Components:
    """Everything a pipeline needs, loaded from one local path."""

    unet: UNet
    vae: "AutoencoderKL"  # noqa: F821
    text_encoder: "CLIPTextModel"  # noqa: F821
    tokenizer: "CLIPTokenizer"  # noqa: F821
    scheduler_config: dict
    kind: str = "sd1"                      # "sd1" (CLIP ViT-L layout) or "sd2" (OpenCLIP layout) for single-file export
    source: str = ""                       # the path it came from
    single_file: bool = False
    extra: dict = field(default_factory=dict)
    generation: dict = field(default_factory=dict)  # the model's own sampling defaults (generation_config.json)
    text_encoder_2: "CLIPTextModelWithProjection | None" = None  # noqa: F821  SDXL's OpenCLIP ViT-bigG
    tokenizer_2: "CLIPTokenizer | None" = None  # noqa: F821

    @property
    def is_sdxl(self) -> bool:
        """True for the SDXL family (its U-Net takes the pooled text and micro-conditioning: "text_time")."""
        return getattr(self.unet.config, "addition_embed_type", None) == "text_time"

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")


def read_generation_config(path: Path) -> dict:
    """A folder's generation_config.json, checked ({} when absent)."""
    return check_generation_config(_read_json(path), str(path)) if path.is_file() else {}


def check_generation_config(config: object, where: str) -> dict:
    """Sampling defaults checked key by key; one-line error naming a bad entry. Sampler display names are normalised."""
    if not isinstance(config, dict):
        raise LatentDiffError(f"{where}: expected a JSON object")
    types = {"num_inference_steps": int, "guidance_scale": (int, float), "sampler": str}
    for key, value in config.items():
        if key not in types:
            raise LatentDiffError(f"{where}: unknown key {key!r} (known: {', '.join(types)})")
        if not isinstance(value, types[key]) or isinstance(value, bool) or (key == "num_inference_steps" and value <= 0):
            raise LatentDiffError(f"{where}: {key} has a bad value {value!r}")
    config = dict(config)
    if "sampler" in config:
        from ..sampler_names import check_sampler

        config["sampler"] = check_sampler(config["sampler"])
    return config


def build_on_meta(make, state: dict[str, torch.Tensor], source: str, what: str):
    """`make()` on the meta device, then take the tensors as they are; strict key and shape checks, one-line errors."""
    with torch.device("meta"):
        module = make()
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        key = (missing or unexpected)[0]
        kind = "missing" if missing else "unexpected"
        raise LatentDiffError(f"{source}: {what} weights do not fit its config ({kind} key {key}, {len(missing)} missing, "
                              f"{len(unexpected)} unexpected)")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise LatentDiffError(f"{source}: {what} weight {k} has shape {tuple(state[k].shape)}, config expects {tuple(v.shape)}")
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval()


def build_unet(config: UNetConfig, state: dict[str, torch.Tensor], source: str) -> UNet:
    """Our U-Net from a state dict in diffusers' names (strict; see build_on_meta)."""
    return build_on_meta(lambda: UNet(config), state, source, "U-Net")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """safetensors → state dict, one-line error for a truncated or corrupt file."""
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for bad headers and short files
        raise LatentDiffError(f"{path} is not a valid safetensors file ({str(e).splitlines()[0][:120]})") from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LatentDiffError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LatentDiffError(f"{path} is not valid JSON") from None


def _weights_file(folder: Path, stem: str, allow_pickle: bool) -> Path:
    """The weights file of a component folder: plain or Hugging Face `fp16` variant, safetensors before pickles
    (`.index.json` for sharded weights); pickles only with allow_pickle."""
    for suffix in (".safetensors", ".safetensors.index.json"):
        for name in (f"{stem}{suffix}", f"{stem}.fp16{suffix}"):
            if (folder / name).is_file():
                return folder / name
    for suffix in (".bin", ".bin.index.json"):
        for name in (f"{stem}{suffix}", f"{stem}.fp16{suffix}"):
            if (folder / name).is_file():
                if not allow_pickle:
                    raise LatentDiffError(f"{folder / name} is a pickle; pass --allow-pickle (allow_pickle=True) to load it with weights_only=True")
                return folder / name
    raise LatentDiffError(f"{folder} has no {stem}.safetensors")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """One weights file, or every shard an `.index.json` names."""
    if path.name.endswith(".index.json"):
        shards = _read_json(path).get("weight_map")
        if not isinstance(shards, dict):
            raise LatentDiffError(f"{path} has no weight_map")
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(shards.values())):
            state.update(_read_weights(path.parent / shard))
        return state
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LatentDiffError(f"{path} could not be read as a weights-only pickle ({str(e).splitlines()[0][:120]})") from None


TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))  # what transformers writes: fast (v5: all) or BPE files


def has_tokenizer(folder: Path) -> bool:
    """True when the folder holds a CLIP tokenizer in a form transformers writes (tokenizer.json or vocab+merges)."""
    return any(all((folder / name).is_file() for name in names) for names in TOKENIZER_FILE_SETS)


def bundled_tokenizer_dir(kind: str) -> Path:
    """The CLIP BPE tokenizer we ship: SD2 (OpenCLIP) pads with "!", SD1 with <|endoftext|>."""
    return ASSETS / ("tokenizer_sd2" if kind == "sd2" else "tokenizer")


def load_tokenizer(folder: Path | None, kind: str):
    """The folder's tokenizer in any form transformers writes; the bundled one for `None`, or (with a one-line
    notice) when the folder has none."""
    from transformers import CLIPTokenizer

    if folder is not None and not has_tokenizer(folder):
        fallback = bundled_tokenizer_dir(kind)
        log.warning("%s holds no tokenizer (tokenizer.json or vocab.json + merges.txt); using the bundled %s CLIP tokenizer",
                    folder, "SD2" if kind == "sd2" else "SD1")
        folder = fallback
    folder = bundled_tokenizer_dir(kind) if folder is None else folder
    if not has_tokenizer(folder):
        raise LatentDiffError("the model has no tokenizer and the bundled CLIP tokenizer is missing from latentdiff/assets")
    try:  # transformers ≥ 5: one CLIPTokenizer class reads tokenizer.json or vocab/merges (CLIPTokenizerFast is an alias)
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise LatentDiffError(f"{folder}: tokenizer could not be loaded ({str(e).splitlines()[0][:120]})") from None


def _load_pretrained(cls, folder: Path, what: str, stem: str, allow_pickle: bool):
    """A diffusers/transformers component from its folder, plain or `fp16` variant (the pipeline casts it later)."""
    if not folder.is_dir():
        raise LatentDiffError(f"{folder.parent} is missing its {what} folder")
    weights = _weights_file(folder, stem, allow_pickle)
    variant = "fp16" if weights.name.startswith(f"{stem}.fp16.") else None
    safetensors = ".safetensors" in weights.name
    try:
        return cls.from_pretrained(str(folder), local_files_only=True, variant=variant, use_safetensors=safetensors)
    except LatentDiffError:
        raise
    except Exception as e:
        raise LatentDiffError(f"{folder}: {what} could not be loaded ({str(e).splitlines()[0][:160]})") from None


def load_diffusers_folder(path: Path, *, allow_pickle: bool = False, prediction_type: str | None = None) -> Components:
    """A diffusers folder: model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    from .direct import DEFAULT_TOKENIZER, direct_text_encoder, direct_vae  # cold-start fast paths, None when not plain

    unet_dir = path / "unet"
    config = UNetConfig.from_folder_config(_read_json(unet_dir / "config.json"))
    unet = build_unet(config, _read_weights(_weights_file(unet_dir, "diffusion_pytorch_model", allow_pickle)), str(unet_dir))
    vae = direct_vae(path / "vae")
    if vae is None:
        vae = _load_pretrained(AutoencoderKL, path / "vae", "VAE", "diffusion_pytorch_model", allow_pickle)
    kind = "sd2" if config.use_linear_projection else "sd1"
    xl: dict = {}
    if config.addition_embed_type == "text_time":  # SDXL: a second encoder; the refiner has only that one
        from . import sdxl

        index = _read_json(path / "model_index.json")
        has_first = (path / "text_encoder").is_dir() and (index.get("text_encoder") or [None])[0] is not None
        kind = sdxl.sdxl_kind(has_first, config.in_channels, vae.config.latent_channels)
        text_encoder_2, tokenizer_2 = sdxl.load_second_encoder(path, _load_pretrained, load_tokenizer, allow_pickle)
        xl = dict(text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, extra=sdxl.read_options(index, kind))
    text_encoder = tokenizer = None
    if kind != "sdxl_refiner":
        text_encoder = direct_text_encoder(path / "text_encoder")
        if text_encoder is None:
            text_encoder = _load_pretrained(CLIPTextModel, path / "text_encoder", "text encoder", "model", allow_pickle)
        text_encoder = text_encoder.eval()
        tokenizer_dir = path / "tokenizer"
        if tokenizer_dir.resolve() == DEFAULT_TOKENIZER:  # the embedded model: the same tables as vocab+merges, 6x faster
            tokenizer_dir = bundled_tokenizer_dir("sd1")
        tokenizer = load_tokenizer(tokenizer_dir, "sd2" if kind == "sd2" else "sd1")
    scheduler_config = _read_json(path / "scheduler" / "scheduler_config.json")
    if prediction_type:
        scheduler_config["prediction_type"] = prediction_type
    return Components(unet, vae.eval(), text_encoder, tokenizer, scheduler_config, kind=kind, source=str(path),
                      generation=read_generation_config(path / GENERATION_CONFIG), **xl)


def load_single_file(path: Path, *, allow_pickle: bool = False, prediction_type: str | None = None) -> Components:
    """A single-file LDM checkpoint (A1111/CompVis layout), converted with explicit key maps."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from .sdxl_single import is_sdxl_file
    from .single_file import read_single_file

    if is_sdxl_file(path):  # SGM/A1111 SDXL layout (conditioner.embedders.*)
        from .sdxl_single import read_sdxl_file
        from .single_file import load_state_dict

        return read_sdxl_file(path, load_state_dict(path), prediction_type=prediction_type)
    parts = read_single_file(path, allow_pickle=allow_pickle, prediction_type=prediction_type)
    unet = build_unet(UNetConfig.from_diffusers(parts.unet_config), parts.unet_state, f"{path} (U-Net)")
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(parts.vae_config)
        text_encoder = CLIPTextModel(CLIPTextConfig(**parts.text_config))
    vae.load_state_dict(parts.vae_state, strict=True, assign=True)
    _load_text_state(text_encoder, parts.text_state)
    tokenizer = load_tokenizer(Path(parts.tokenizer_dir), parts.kind)
    return Components(unet, vae.eval(), text_encoder.eval(), tokenizer, parts.scheduler_config, kind=parts.kind,
                      source=str(path), single_file=True)


def _load_text_state(model, state: dict[str, torch.Tensor]) -> None:
    """Load CLIP text weights; the position_ids buffer is rebuilt rather than read."""
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise LatentDiffError(f"text encoder weights do not fit its config (first: {(missing or unexpected)[0]})")
    for name, buf in list(model.named_buffers()):
        if name.endswith("position_ids") and buf.is_meta:
            owner = model.get_submodule(name.rsplit(".", 1)[0])
            owner.register_buffer("position_ids", torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)


def load_components(path: str | os.PathLike, *, allow_pickle: bool = False, prediction_type: str | None = None) -> Components:
    """Dispatch on what the path is: a diffusers folder or a single checkpoint file; never a hub lookup."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LatentDiffError(f"no such model path: {p}")
    if p.is_dir():
        if not (p / "model_index.json").is_file():
            raise LatentDiffError(f"{p} is not a model folder (no model_index.json)")
        return load_diffusers_folder(p, allow_pickle=allow_pickle, prediction_type=prediction_type)
    if p.suffix.lower() not in WEIGHT_SUFFIXES:
        raise LatentDiffError(f"{p} is neither a diffusers folder nor a checkpoint file ({', '.join(WEIGHT_SUFFIXES)})")
    return load_single_file(p, allow_pickle=allow_pickle, prediction_type=prediction_type)


def file_hash(path: str | os.PathLike) -> str:
    """A1111's model hash: the first 10 hex digits of the file's sha256; for a folder see `latentdiff.hashes.model_hash`."""
    from ..hashes import model_hash

    return model_hash(path)


def resolve_model(path: str | None) -> str:
    """The user's model path, or the embedded default model (a diffusers folder in latentdiff/assets)."""
    if path and path != "default":
        return path
    default = ASSETS / "default"
    if not (default / "model_index.json").is_file():
        raise LatentDiffError("no --model given and the embedded default model is not built into this install yet; pass --model PATH")
    return str(default)
