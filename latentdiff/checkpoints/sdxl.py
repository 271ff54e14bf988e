"""SDXL diffusers folders: the second text encoder and tokenizer, and the pipeline options model_index.json carries."""

from __future__ import annotations

from pathlib import Path

# model_index.json pipeline class per SDXL model kind (what diffusers' DiffusionPipeline.from_pretrained builds).
PIPELINE_CLASSES = {"sdxl": "StableDiffusionXLPipeline", "sdxl_refiner": "StableDiffusionXLImg2ImgPipeline",
                    "sdxl_inpaint": "StableDiffusionXLInpaintPipeline"}
OPTION_DEFAULTS = {"force_zeros_for_empty_prompt": True, "requires_aesthetics_score": False}


def sdxl_kind(has_first_encoder: bool, in_channels: int, latent_channels: int = 4) -> str:
    """"sdxl_refiner" without the CLIP ViT-L encoder, "sdxl_inpaint" with 9 input channels, else "sdxl"."""
    if not has_first_encoder:
        return "sdxl_refiner"
    return "sdxl_inpaint" if in_channels == 2 * latent_channels + 1 else "sdxl"


def read_options(index: dict, kind: str) -> dict:
    """force_zeros_for_empty_prompt / requires_aesthetics_score from model_index.json (defaults: the base's; the
    refiner's published folder says False / True)."""
    defaults = dict(OPTION_DEFAULTS)
    if kind == "sdxl_refiner":
        defaults = {"force_zeros_for_empty_prompt": False, "requires_aesthetics_score": True}
    return {k: bool(index.get(k, v)) for k, v in defaults.items()}


def load_second_encoder(path: Path, load_pretrained, load_tokenizer, allow_pickle: bool):
    """text_encoder_2/ (CLIPTextModelWithProjection) and tokenizer_2/ (the bundled bigG-style tokenizer if absent)."""
    from transformers import CLIPTextModelWithProjection

    encoder = load_pretrained(CLIPTextModelWithProjection, path / "text_encoder_2", "second text encoder", "model", allow_pickle)
    return encoder.eval(), load_tokenizer(path / "tokenizer_2", "sd2")


def write_extras(c, tmp: Path) -> dict:
    """Write text_encoder_2/ and tokenizer_2/; return the model_index.json entries of an SDXL folder."""
    c.text_encoder_2.save_pretrained(str(tmp / "text_encoder_2"))
    c.tokenizer_2.save_pretrained(str(tmp / "tokenizer_2"))
    first = c.text_encoder is not None
    entries = {"_class_name": PIPELINE_CLASSES.get(c.kind, "StableDiffusionXLPipeline"),
               "text_encoder": ["transformers", "CLIPTextModel"] if first else [None, None],
               "tokenizer": ["transformers", "CLIPTokenizer"] if first else [None, None],
               "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
               "tokenizer_2": ["transformers", "CLIPTokenizer"],
               "force_zeros_for_empty_prompt": c.extra.get("force_zeros_for_empty_prompt", True)}
    if c.kind != "sdxl":  # the img2img/inpaint pipelines take the aesthetic-score flag
        entries["requires_aesthetics_score"] = c.extra.get("requires_aesthetics_score", False)
    return entries
