"""peft LoRA layers on our U-Net and the CLIP text encoder: find targets, inject, check shapes, copy weights in and out."""

from __future__ import annotations

import warnings
from typing import Iterable, Mapping

import torch
from torch import nn

from ..errors import LatentDiffError
from .formats import LoraModule, LoraState, lora_config_kwargs, split_key

# Short target names → module-path suffixes. Attention projections are the classic LoRA targets
# (Hu et al. 2021, https://arxiv.org/abs/2106.09685; SD recipe of cloneofsimo/lora and diffusers).
UNET_TARGETS = {
    "to_q": ("to_q",), "to_k": ("to_k",), "to_v": ("to_v",), "to_out.0": ("to_out.0",),
    "attention": ("to_q", "to_k", "to_v", "to_out.0"),
    "proj_in": ("proj_in",), "proj_out": ("proj_out",), "proj": ("proj_in", "proj_out"),
    "ff": ("ff.net.0.proj", "ff.net.2"), "ff.net.0.proj": ("ff.net.0.proj",), "ff.net.2": ("ff.net.2",),
}
TEXT_TARGETS = {
    "q_proj": ("q_proj",), "k_proj": ("k_proj",), "v_proj": ("v_proj",), "out_proj": ("out_proj",),
    "attention": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "fc1": ("mlp.fc1",), "fc2": ("mlp.fc2",), "mlp": ("mlp.fc1", "mlp.fc2"),
}
DEFAULT_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
DEFAULT_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _tuner_layer_cls():
    from peft.tuners.tuners_utils import BaseTunerLayer

    return BaseTunerLayer


def text_prefix(text_encoder: nn.Module) -> str:
    """'' when the model's module paths already start with text_model. (transformers < 5), else 'text_model.'."""
    return "" if hasattr(text_encoder, "text_model") else "text_model."


def component_modules(unet: nn.Module | None, text_encoder: nn.Module | None = None,
                      text_encoder_2: nn.Module | None = None) -> dict[str, nn.Module]:
    """Canonical key ('unet.…', 'text_encoder.text_model.…', SDXL's 'text_encoder_2.text_model.…') → every
    Linear/Conv2d a LoRA can adapt (or its peft wrapper)."""
    tuner = _tuner_layer_cls()
    out: dict[str, nn.Module] = {}
    for component, model in (("unet", unet), ("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2)):
        if model is None:
            continue
        prefix = f"{component}." + (text_prefix(model) if component != "unet" else "")
        wrapped: list[str] = []
        for name, module in model.named_modules():
            if any(name.startswith(w + ".") for w in wrapped):
                continue  # base_layer and lora_A/B inside a peft layer
            if isinstance(module, tuner):
                wrapped.append(name)
                out[prefix + name] = module
            elif isinstance(module, (nn.Linear, nn.Conv2d)):
                out[prefix + name] = module
    return out


def model_path(key: str, text_encoder: nn.Module | None, text_encoder_2: nn.Module | None = None) -> tuple[str, str]:
    """Canonical key → (component, path inside that component's model)."""
    component, path = split_key(key)
    model = text_encoder_2 if component == "text_encoder_2" else text_encoder
    if component != "unet" and model is not None and text_prefix(model):
        path = path.removeprefix("text_model.")
    return component, path


def find_targets(modules: Iterable[str], component: str, names: Iterable[str]) -> list[str]:
    """Canonical keys of `component` whose path ends with one of the named targets (see UNET_TARGETS/TEXT_TARGETS)."""
    table = UNET_TARGETS if component == "unet" else TEXT_TARGETS
    suffixes = []
    for n in names:
        if n not in table:
            raise LatentDiffError(f"unknown {component} LoRA target {n!r}; choose from {', '.join(table)}")
        suffixes.extend(table[n])
    keys = [k for k in modules if split_key(k)[0] == component and any(k.endswith("." + s) for s in suffixes)]
    if not keys:
        raise LatentDiffError(f"no {component} layer matches the LoRA targets {', '.join(names)}")
    return keys


def _base(module: nn.Module) -> nn.Module:
    return module.get_base_layer() if isinstance(module, _tuner_layer_cls()) else module


def fit_module(m: LoraModule, module: nn.Module, key: str) -> LoraModule:
    """Check a LoRA pair against its layer (one line naming the file key on mismatch); reshape 1×1 conv ⇄ linear."""
    base = _base(module)
    down, up = m.down, m.up
    where = f"LoRA key {m.source_key or key}"
    if isinstance(base, nn.Linear):
        if down.ndim == 4 and down.shape[2:] == (1, 1) and up.shape[2:] == (1, 1):  # 1×1 conv LoRA on a linear proj (SD2)
            down, up = down[:, :, 0, 0], up[:, :, 0, 0]
        if down.ndim != 2:
            raise LatentDiffError(f"{where} is a conv LoRA {tuple(m.down.shape)} but {key} is a linear layer")
        want_down, want_up = (m.rank, base.in_features), (base.out_features, m.rank)
    elif isinstance(base, nn.Conv2d):
        if down.ndim == 2 and base.kernel_size == (1, 1):  # linear LoRA on a 1×1 conv proj (SD1)
            down, up = down[:, :, None, None], up[:, :, None, None]
        want_down, want_up = (m.rank, base.in_channels, *base.kernel_size), (base.out_channels, m.rank, 1, 1)
    else:
        raise LatentDiffError(f"{where} targets {key}, which is a {type(base).__name__}, not a linear or conv layer")
    if tuple(down.shape) != want_down or tuple(up.shape) != want_up:
        raise LatentDiffError(f"{where} has shapes down {tuple(m.down.shape)}, up {tuple(m.up.shape)}; "
                              f"the model's layer needs {want_down}, {want_up}")
    return LoraModule(down, up, m.alpha, m.source_key)


def check_fits(state: LoraState, modules: Mapping[str, nn.Module]) -> LoraState:
    """Every module key must name an adaptable layer of the model with matching shapes; else one line naming the key."""
    fitted = {}
    for key, m in state.items():
        if key not in modules:
            raise LatentDiffError(f"LoRA key {m.source_key or key} names no layer of this model ({key} not found)")
        fitted[key] = fit_module(m, modules[key], key)
    return fitted


def inject(model: nn.Module, modules: Mapping[str, LoraModule], adapter: str, *, dropout: float = 0.0,
           init: bool | str = True) -> None:
    """Add peft LoRA layers named `adapter` on the given module paths, with each module's rank and alpha."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(**lora_config_kwargs(modules), lora_dropout=dropout, init_lora_weights=init)
    config.target_modules = set(modules)  # exact paths (the kwargs hold a sorted list for the file header)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(peft_config|multiple adapters).*")
        inject_adapter_in_model(config, model, adapter_name=adapter)


@torch.no_grad()
def attach_state(unet: nn.Module, text_encoder: nn.Module | None, state: LoraState, adapter: str,
                 text_encoder_2: nn.Module | None = None) -> int:
    """Inject `adapter` into the U-Net/text encoder(s) and copy the state's weights in; returns the layer count."""
    modules = component_modules(unet, text_encoder, text_encoder_2)
    fitted = check_fits(state, modules)
    for component, model in (("unet", unet), ("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2)):
        part = {model_path(k, text_encoder, text_encoder_2)[1]: m for k, m in fitted.items() if split_key(k)[0] == component}
        if not part:
            continue
        if model is None:
            raise LatentDiffError(f"the LoRA adapts the {component}, which this model does not have")
        inject(model, part, adapter)
        for path, m in part.items():
            layer = model.get_submodule(path)
            layer.lora_A[adapter].weight.copy_(m.down)
            layer.lora_B[adapter].weight.copy_(m.up)
    return len(fitted)


def add_trainable(unet: nn.Module, text_encoder: nn.Module | None, keys: Iterable[str], *, rank: int, alpha: float,
                  adapter: str, dropout: float = 0.0, init: bool | str = True,
                  text_encoder_2: nn.Module | None = None) -> list[nn.Parameter]:
    """Fresh LoRA layers (up = 0: the model is unchanged at step 0) on the given canonical keys; returns their parameters."""
    modules = component_modules(unet, text_encoder, text_encoder_2)
    params = []
    for component, model in (("unet", unet), ("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2)):
        specs = {}
        for key in keys:
            if split_key(key)[0] != component:
                continue
            base = _base(modules[key])
            shape = (rank, base.in_features) if isinstance(base, nn.Linear) else (rank, base.in_channels, *base.kernel_size)
            specs[model_path(key, text_encoder, text_encoder_2)[1]] = LoraModule(torch.empty(shape, device="meta"),
                                                                 torch.empty(1, rank, device="meta"), float(alpha))
        if not specs:
            continue
        inject(model, specs, adapter, dropout=dropout, init=init)
        for path in specs:
            layer = model.get_submodule(path)
            params += [layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
    return params


def extract_state(unet: nn.Module | None, text_encoder: nn.Module | None, adapter: str,
                  text_encoder_2: nn.Module | None = None) -> LoraState:
    """The adapter's current weights as a LoraState (detached CPU fp32 copies), with each layer's alpha."""
    state: LoraState = {}
    for key, module in component_modules(unet, text_encoder, text_encoder_2).items():
        if isinstance(module, _tuner_layer_cls()) and adapter in getattr(module, "lora_A", {}):
            down = module.lora_A[adapter].weight.detach().float().cpu().clone()
            up = module.lora_B[adapter].weight.detach().float().cpu().clone()
            state[key] = LoraModule(down, up, float(module.lora_alpha[adapter]), key)
    return state


def tuner_layers(*models: nn.Module | None) -> list[nn.Module]:
    """Every peft tuner layer in the given models."""
    tuner = _tuner_layer_cls()
    return [m for model in models if model is not None for m in model.modules() if isinstance(m, tuner)]


def random_state(unet: nn.Module, text_encoder: nn.Module | None, *, unet_targets: Iterable[str] = DEFAULT_UNET_TARGETS,
                 text_targets: Iterable[str] = (), rank: int = 4, alpha: float = 4.0, std: float = 0.1,
                 seed: int = 0) -> LoraState:
    """A LoRA with random down AND up weights (a trained-looking one, unlike a fresh init) for tests and benchmarks."""
    g = torch.Generator().manual_seed(seed)
    modules = component_modules(unet, text_encoder)
    keys = find_targets(modules, "unet", unet_targets) if unet_targets else []
    if text_targets:
        keys += find_targets(modules, "text_encoder", text_targets)
    state: LoraState = {}
    for key in keys:
        base = _base(modules[key])
        if isinstance(base, nn.Linear):
            down, up = torch.randn(rank, base.in_features, generator=g), torch.randn(base.out_features, rank, generator=g)
        else:
            down = torch.randn(rank, base.in_channels, *base.kernel_size, generator=g)
            up = torch.randn(base.out_channels, rank, 1, 1, generator=g)
        state[key] = LoraModule(down * std, up * std, float(alpha), key)
    return state
