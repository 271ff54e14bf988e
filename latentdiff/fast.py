"""Inference speed and memory levers, each a small switch, and the policy that turns on those a benchmark proved.

Every lever keeps parameter names and values as they are (LoRA, saving and parity keep working) and draws the
same picture as the default path within the tolerance `tests/test_fast.py` checks. A pipeline turns on, per
device type and dtype, the levers listed in `PROVEN` by itself (`fast=None`); `fast=True` adds VAE tiling of large
images and `fast=False` turns everything off. Each entry names the committed benchmark JSON that measured it (EVIDENCE).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from .errors import LatentDiffError
from .models.attention import Attention, scaled_dot_product
from .runtime import DTYPE_NAMES

# Levers a pipeline turns on by itself (fast=None, the default) and with fast=True, by (device type, weights dtype):
# only those a committed benchmark (EVIDENCE) measured faster than the default path in the same run, with peak memory
# no higher and the image inside the dtype's own drift. Nothing is listed for CUDA until a GPU run has measured it.
LEVERS = ("channels_last", "fused_qkv")
PROVEN: dict[tuple[str, str], tuple[str, ...]] = {
    ("cpu", "bf16"): ("channels_last",),
}
EVIDENCE: dict[tuple[str, str], str] = {
    ("cpu", "bf16"): "benchmarks/results/cpu_step.json: SD1.5 U-Net CFG step 0.82x diffusers-bf16 (0.84x ours without it), "
                     "peak RSS 0.93x diffusers', image drift vs fp32 mean 0.63/255 (bf16 alone 0.65), idle 2-core AMX CPU",
}
VAE_TILE_ABOVE = 1024  # pixels per side: larger images decode in tiles of this size (peak memory stays at 1024² level)


def set_threads(n: int | None) -> int:
    """Use `n` intra-op CPU threads (None: leave torch's choice); returns the count in effect."""
    if n is not None:
        if n < 1:
            raise LatentDiffError(f"threads must be positive, got {n}")
        torch.set_num_threads(n)
    return torch.get_num_threads()


def channels_last(module: nn.Module) -> nn.Module:
    """Store 4-D conv weights NHWC so oneDNN/cuDNN convolutions skip layout reorders; activations follow the weights."""
    return module.to(memory_format=torch.channels_last)


# -- fused QKV for self-attention -------------------------------------------------------------------------------------
def _fused_qkv_weight(attn: Attention) -> torch.Tensor | None:
    """The (3·inner, dim) concatenation of to_q/to_k/to_v, rebuilt when any of them changed (LoRA fuse, reload)."""
    linears = (attn.to_q, attn.to_k, attn.to_v)
    if not all(type(m) is nn.Linear for m in linears):  # an adapter wraps them: run the unfused path
        return None
    key = tuple((m.weight.data_ptr(), m.weight._version, m.weight.dtype, m.weight.device) for m in linears)
    if getattr(attn, "_qkv_key", None) != key:
        attn._qkv_weight = torch.cat([m.weight.detach() for m in linears])  # (3·h·d, C)
        attn._qkv_key = key
    return attn._qkv_weight


def _fused_self_attention(self: Attention, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """Attention.forward with one (C → 3·h·d) GEMM instead of three, for self-attention only."""
    weight = _fused_qkv_weight(self) if context is None else None
    if weight is None:
        return Attention.forward(self, x, context)
    b, n, _ = x.shape
    q, k, v = F.linear(x, weight).chunk(3, dim=-1)  # 3 × (B, N, h·d)
    q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # (B, h, N, d)
    out = scaled_dot_product(q, k, v, self.backend).transpose(1, 2).reshape(b, n, -1)  # (B, N, h·d)
    return self.to_out[1](self.to_out[0](out))


def fuse_qkv(model: nn.Module) -> int:
    """Run every self-attention (the `attn1` of each transformer block) with a fused QKV projection; returns how many."""
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, Attention) and name.endswith("attn1"):
            module.forward = types.MethodType(_fused_self_attention, module)
            count += 1
    return count


def unfuse_qkv(model: nn.Module) -> None:
    """Undo `fuse_qkv` and drop the cached fused weights."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.__dict__.pop("forward", None)
            module.__dict__.pop("_qkv_weight", None)
            module.__dict__.pop("_qkv_key", None)


# -- torch.compile --------------------------------------------------------------------------------------------------
def compile_module(module: nn.Module, *, mode: str | None = None, dynamic: bool = False, freezing: bool | None = None) -> nn.Module:
    """Compile `module` in place with inductor (`nn.Module.compile`: names and state_dict stay the same).

    mode: None | "reduce-overhead" (CUDA graphs) | "max-autotune"; dynamic=False specialises on shapes (recompiles
    per image size). freezing: inductor folds weights as constants (CPU: prepacked oneDNN weights); inference only.
    """
    if freezing is not None:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = freezing
    module.compile(mode=mode, dynamic=dynamic)
    return module


# -- VAE tiling --------------------------------------------------------------------------------------------------------
def enable_vae_tiling(vae, tile: int = VAE_TILE_ABOVE, overlap: float = 0.25) -> None:
    """Decode (and encode) images wider or taller than `tile` pixels in overlapping tiles, blended linearly.

    Uses diffusers' own AutoencoderKL tiling; images up to `tile` on both sides decode in one piece, exactly as
    without tiling, and larger ones keep the peak memory of a `tile`² decode. Tiles normalise separately, so a
    tiled image differs slightly from an untiled one (the overlap blends the seams).
    """
    if not hasattr(vae, "use_tiling"):
        raise LatentDiffError(f"{type(vae).__name__} does not support tiled decoding")
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    if tile % scale or tile < 2 * scale:
        raise LatentDiffError(f"VAE tile must be a multiple of {scale} pixels, at least {2 * scale}; got {tile}")
    if not 0.0 <= overlap < 0.5:
        raise LatentDiffError(f"VAE tile overlap must be in [0, 0.5), got {overlap}")
    vae.tile_sample_min_size = tile
    vae.tile_latent_min_size = tile // scale
    vae.tile_overlap_factor = overlap
    vae.use_tiling = True


def disable_vae_tiling(vae) -> None:
    vae.use_tiling = False


# -- sequential offload ----------------------------------------------------------------------------------------------
class SequentialOffload:
    """Keep weights on `storage` (CPU) and move each module's own tensors to `device` only while it runs.

    For GPUs too small for the model: peak device memory is one layer's weights plus activations, at the cost
    of a host→device copy of every weight per call. Modules whose tensors are read outside their own forward
    are not supported (none in our U-Net, diffusers' VAE or transformers' CLIP).
    """

    def __init__(self, model: nn.Module, device: torch.device | str, storage: torch.device | str = "cpu"):
        self.device, self.storage = torch.device(device), torch.device(storage)
        self.model = model
        model.to(self.storage)
        self.handles: list = [model.register_forward_pre_hook(self._inputs_to_device, with_kwargs=True)]
        pin = self.storage.type == "cpu" and self.device.type == "cuda"
        for module in model.modules():
            own = list(module._parameters.items()) + list(module._buffers.items())
            if not any(t is not None for _, t in own):
                continue
            if pin:
                for _, t in own:
                    if t is not None:
                        t.data = t.data.pin_memory()
            self.handles.append(module.register_forward_pre_hook(self._load))
            self.handles.append(module.register_forward_hook(self._unload))

    def _inputs_to_device(self, module: nn.Module, args, kwargs):
        """Callers build inputs where the weights rest (e.g. CLIP's ids on `text_encoder.device`): send them along."""
        move = lambda v: v.to(self.device) if isinstance(v, torch.Tensor) else v  # noqa: E731
        return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}

    def _move(self, module: nn.Module, where: torch.device) -> None:
        for store in (module._parameters, module._buffers):
            for t in store.values():
                if t is not None and t.device != where:
                    t.data = t.data.to(where, non_blocking=True)

    def _load(self, module: nn.Module, args) -> None:
        self._move(module, self.device)

    def _unload(self, module: nn.Module, args, output) -> None:
        self._move(module, self.storage)

    def remove(self) -> None:
        """Take the hooks off (weights stay on the storage device)."""
        for h in self.handles:
            h.remove()
        self.handles.clear()


def sequential_offload(model: nn.Module, device: torch.device | str, storage: torch.device | str = "cpu") -> SequentialOffload:
    """Run `model` on `device` with its weights kept on `storage` between layers (see SequentialOffload)."""
    return SequentialOffload(model, device, storage)


def enable_sequential_offload(pipe, device: torch.device | str | None = None) -> list[SequentialOffload]:
    """Keep a pipeline's U-Net, text encoder and VAE on the CPU and stream each layer to `device` as it runs."""
    device = pipe.device if device is None else torch.device(device)
    offloads = [SequentialOffload(m, device) for m in (pipe.unet, pipe.text_encoder, pipe.vae)]
    pipe.device = device  # noise and timesteps are made on the compute device
    return offloads


# -- the policy -------------------------------------------------------------------------------------------------------
def levers_for(device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[str, ...]:
    """The levers proven faster for this device type and weights dtype (what the default and fast=True turn on)."""
    return PROVEN.get((device.type, DTYPE_NAMES.get(dtype, str(dtype))), ())


def apply_fast(pipe, *, fast: bool | None = True, compile: bool = False, compile_mode: str | None = None,
               levers: tuple[str, ...] | None = None) -> list[str]:
    """Turn on `levers` (default: those proven for `pipe`'s device and dtype); fast=True adds VAE tiling of large
    images, fast=False turns nothing on; compile when asked. Returns the names of what is on."""
    on: list[str] = []
    if fast is not False:
        for lever in levers_for(pipe.device, pipe.dtype) if levers is None else levers:
            if lever not in LEVERS:
                raise LatentDiffError(f"unknown speed lever {lever!r}; choose from {', '.join(LEVERS)}")
            if lever == "channels_last":
                channels_last(pipe.unet)
                channels_last(pipe.vae)
            elif lever == "fused_qkv":
                fuse_qkv(pipe.unet)
            on.append(lever)
    if fast:
        enable_vae_tiling(pipe.vae, VAE_TILE_ABOVE)
        on.append(f"vae_tiling>{VAE_TILE_ABOVE}")
    if compile:
        compile_module(pipe.unet, mode=compile_mode, freezing=pipe.device.type == "cpu" or None)
        on.append("compile")
    return on
