"""Several named LoRA adapters on one model: load, weight, switch, disable, fuse/unfuse — the base weights stay loaded."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import LatentDiffError
from .attach import attach_state, component_modules, tuner_layers
from .formats import LoraState
from .io import LoraMetadata, read_lora


@dataclass
class Adapter:
    """One loaded LoRA."""

    name: str
    key: str                  # the peft adapter name inside the layers (user names could clash with nn.Module attributes)
    path: str                 # file it came from ("" for one added from memory)
    weight: float             # multiplies the LoRA delta in every adapted layer (A1111's <lora:name:weight>)
    layers: int               # adapted layers
    format: str = ""          # "peft", "kohya", "diffusers_old" or "memory"
    metadata: LoraMetadata | None = None


class LoraManager:
    """Named adapters on a U-Net (and text encoder) through peft layers; only the active ones with weight ≠ 0 run."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module | None = None, text_encoder_2: nn.Module | None = None):
        self.unet, self.text_encoder, self.text_encoder_2 = unet, text_encoder, text_encoder_2  # _2: SDXL's bigG
        self.adapters: dict[str, Adapter] = {}
        self.enabled = True
        self._fuse_wanted = False
        self._count = 0
        self._saved: dict[int, torch.Tensor] = {}  # id(peft layer) → base weight before merging, for a bit-exact unfuse

    # -- loading ---------------------------------------------------------------------------------------------------
    def load(self, path: str | os.PathLike, *, name: str | None = None, weight: float = 1.0) -> str:
        """Read a LoRA file (peft/diffusers, old diffusers or kohya/A1111) and attach it as adapter `name`."""
        from .sdxl import kohya_aliases, refuse_sdxl_lora

        refuse_sdxl_lora(path, self.text_encoder_2 is not None)
        modules = component_modules(self.unet, self.text_encoder, self.text_encoder_2)
        lora = read_lora(path, modules, kohya_aliases(self.unet, modules))
        name = name or self._free_name(Path(lora.path).stem)
        try:
            return self.add(lora.state, name=name, weight=weight, path=str(path), format=lora.format, metadata=lora.metadata)
        except LatentDiffError as e:
            raise LatentDiffError(f"{Path(lora.path).name}: {e}") from None

    def add(self, state: LoraState, *, name: str, weight: float = 1.0, path: str = "", format: str = "memory",
            metadata: LoraMetadata | None = None) -> str:
        """Attach an in-memory LoRA state as adapter `name`."""
        if name in self.adapters:
            raise LatentDiffError(f"a LoRA named {name!r} is already loaded; pass another name")
        if not name:
            raise LatentDiffError("a LoRA needs a non-empty name")
        self._count += 1
        key = f"adapter{self._count}"
        with self._changing():
            layers = attach_state(self.unet, self.text_encoder, state, key, self.text_encoder_2)
            self.adapters[name] = Adapter(name, key, path, float(weight), layers, format, metadata)
        return name

    def _free_name(self, stem: str) -> str:
        stem = stem or "lora"
        name, i = stem, 2
        while name in self.adapters:
            name, i = f"{stem}-{i}", i + 1
        return name

    def remove(self, name: str) -> None:
        """Drop an adapter's layers; the others keep their weights."""
        self._check_names([name])
        with self._changing():
            key = self.adapters[name].key
            for layer in self._layers():
                if key in layer.lora_A:
                    layer.delete_adapter(key)
            for model in (self.unet, self.text_encoder, self.text_encoder_2):
                getattr(model, "peft_config", {}).pop(key, None)
            del self.adapters[name]

    # -- switching ---------------------------------------------------------------------------------------------------
    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Make exactly the named adapters active with these weights; the others stay loaded at weight 0."""
        self._check_names(weights)
        with self._changing():
            for a in self.adapters.values():
                a.weight = float(weights.get(a.name, 0.0))
            self.enabled = True

    def set_enabled(self, enabled: bool) -> None:
        """Switch every adapter off (the base model's own output) or back on, weights kept."""
        with self._changing():
            self.enabled = enabled

    @property
    def active(self) -> list[Adapter]:
        """Adapters that change the output now."""
        return [a for a in self.adapters.values() if self.enabled and a.weight != 0.0]

    def _check_names(self, names) -> None:
        for n in names:
            if n not in self.adapters:
                loaded = ", ".join(self.adapters) or "none"
                raise LatentDiffError(f"no LoRA named {n!r} is loaded (loaded: {loaded})")

    def _apply(self) -> None:
        """Push enabled/active/weights to every peft layer."""
        active = self.active
        for layer in self._layers():
            layer.enable_adapters(self.enabled)
            keys = [a.key for a in active if a.key in layer.lora_A]
            layer.set_adapter(keys, inference_mode=True)
            for a in active:
                layer.set_scale(a.key, a.weight)

    # -- fusing ------------------------------------------------------------------------------------------------------
    @property
    def fused(self) -> bool:
        return self._fuse_wanted

    def fuse(self) -> None:
        """Fold the active adapters into the base weights: no LoRA cost per step; unfuse() restores them exactly."""
        self._fuse_wanted = True
        self._apply()
        self._merge()

    def unfuse(self) -> None:
        """Undo fuse(): the saved base weights come back bit for bit."""
        self._fuse_wanted = False
        self._unmerge()

    @torch.no_grad()
    def _merge(self) -> None:
        for layer in self._layers():
            names = [n for n in layer.active_adapters if n in layer.lora_A]
            if self.enabled and names and id(layer) not in self._saved:
                self._saved[id(layer)] = layer.get_base_layer().weight.detach().clone()
                layer.merge(adapter_names=names)

    @torch.no_grad()
    def _unmerge(self) -> None:
        for layer in self._layers():
            saved = self._saved.pop(id(layer), None)
            if saved is not None:
                layer.unmerge()
                layer.get_base_layer().weight.copy_(saved)
        self._saved.clear()

    def _layers(self) -> list[nn.Module]:
        return tuner_layers(self.unet, self.text_encoder, self.text_encoder_2)

    @contextmanager
    def _changing(self):
        """Unmerge, let the caller change adapters, push the new state to the layers, merge again if fused."""
        self._unmerge()
        try:
            yield
        finally:
            self._apply()
            if self._fuse_wanted:
                self._merge()
