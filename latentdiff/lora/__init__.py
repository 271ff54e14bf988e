"""LoRA adapters: peft layers on our U-Net and CLIP, peft/diffusers ⇄ kohya/A1111 files with the true alpha, switching."""

from .attach import DEFAULT_TEXT_TARGETS, DEFAULT_UNET_TARGETS, TEXT_TARGETS, UNET_TARGETS, random_state
from .formats import LoraModule, LoraState, kohya_name
from .io import PEFT_FILE_NAME, LoraFile, LoraMetadata, read_lora, save_lora
from .manager import Adapter, LoraManager

__all__ = [
    "Adapter", "DEFAULT_TEXT_TARGETS", "DEFAULT_UNET_TARGETS", "LoraFile", "LoraManager", "LoraMetadata", "LoraModule",
    "LoraState", "PEFT_FILE_NAME", "TEXT_TARGETS", "UNET_TARGETS", "kohya_name", "random_state", "read_lora", "save_lora",
]
