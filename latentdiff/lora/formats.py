"""LoRA key layouts: peft/diffusers (`unet.…lora_A`), old diffusers (`…to_q_lora.down`) and kohya/A1111 (`lora_unet_…`).

Everything is read into one neutral form, `{module key: LoraModule}`, where a module key is the component
("unet" or "text_encoder") and the module's path in the diffusers/transformers layout, e.g.
`unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q` or
`text_encoder.text_model.encoder.layers.0.self_attn.q_proj`. Each module carries its true alpha:
the layer computes W x + (alpha / rank) · up(down(x)).

kohya writes one `.alpha` per module; files written by diffusers (peft `lora_A/lora_B` keys, or the
`lora.down/lora.up` keys of its training scripts) carry r / lora_alpha / patterns in the `lora_adapter_metadata`
header entry, per component (`unet.lora_alpha`) or unprefixed (one model's `save_lora_adapter`); with neither,
alpha = rank (scale 1), as diffusers assumes.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

from ..errors import LatentDiffError

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")  # text_encoder_2: SDXL's OpenCLIP bigG
KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}
# kohya's SDXL files call the first encoder te1 (and the U-Net by its SGM names: lora.sdxl.kohya_aliases).
KOHYA_COMPONENTS = (("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"), ("lora_te_", "text_encoder"))
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # diffusers' header entry holding LoraConfig kwargs per component
ANY_COMPONENT = "*"  # diffusers_configs' key for an unprefixed LoraConfig (a single model's save_lora_adapter)
_UNSUPPORTED = {  # tensor-name parts (after the layer name) of adapter kinds that are not plain LoRA
    "hada_": "LoHa", "lokr_": "LoKr", "dora_scale": "DoRA", "lora_magnitude_vector": "DoRA", "diff": "full-weight diff",
    "diff_b": "full-weight diff", "lora_mid": "LoCon with Tucker decomposition", "oft_": "OFT", "a1.weight": "GLoRA",
}


@dataclass
class LoraModule:
    """One adapted layer: W' = W + weight · (alpha / rank) · up @ down."""

    down: torch.Tensor       # (r, in) for Linear, (r, in, kh, kw) for Conv2d (peft's lora_A)
    up: torch.Tensor         # (out, r) for Linear, (out, r, 1, 1) for Conv2d (peft's lora_B)
    alpha: float             # the true alpha; the layer's scale is alpha / rank
    source_key: str = ""     # the file key it came from, for error messages

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


LoraState = dict[str, LoraModule]


def split_key(key: str) -> tuple[str, str]:
    """'unet.down_blocks.0…to_q' → ('unet', 'down_blocks.0…to_q')."""
    component, _, path = key.partition(".")
    return component, path


def check_unsupported(keys: Iterable[str]) -> None:
    """Refuse adapter kinds we cannot apply, naming the first offending key."""
    for key in keys:
        tail = key.rsplit(".", 2)[-2:]  # e.g. ["hada_w1_a"] parts after the layer name, or ["lora_mid", "weight"]
        for part, kind in _UNSUPPORTED.items():
            if any(t.startswith(part) if part.endswith("_") else t == part for t in tail) or ".".join(tail) == part:
                raise LatentDiffError(f"{kind} adapters are not supported (key {key}); only plain LoRA is")


def detect_format(keys: Iterable[str]) -> str:
    """'kohya', 'peft' or 'diffusers_old' from the tensor names; one-line error for anything else."""
    keys = list(keys)
    if not keys:
        raise LatentDiffError("the LoRA file holds no tensors")
    check_unsupported(keys)
    if all(k.startswith(tuple(p for p, _ in KOHYA_COMPONENTS)) for k in keys):
        return "kohya"
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "peft"
    if any(re.search(r"(_lora|\.lora|\.lora_linear_layer)\.(down|up)\.", k) for k in keys):
        return "diffusers_old"
    raise LatentDiffError(f"not a LoRA file: key {keys[0]} is neither kohya (lora_unet_…) nor peft (…lora_A/lora_B)")


# ---- peft / diffusers ------------------------------------------------------------------------------------------

def _component_of(key: str) -> tuple[str, str]:
    """Component and module-relative key of a peft/diffusers tensor name (prefix optional, as in old files)."""
    for prefix in ("base_model.model.",):
        key = key.removeprefix(prefix)
    component, path = split_key(key)
    if component not in COMPONENTS:
        component, path = ("text_encoder" if key.startswith("text_model.") else "unet"), key
    if component.startswith("text_encoder") and not path.startswith("text_model."):
        path = "text_model." + path  # transformers ≥ 5 dropped the wrapper from module paths; files keep it
    return component, path


def _pattern_value(patterns: Mapping[str, float], path: str) -> float | None:
    """peft's rank/alpha pattern lookup: the first pattern matching the end of the module path."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern.removeprefix('^')})$", path):
            return value
    return None


def _config_alpha(config: Mapping, path: str, rank: int) -> float:
    """The alpha a diffusers LoraConfig dict gives a module (rsLoRA's alpha/√r expressed as a plain alpha)."""
    alpha = _pattern_value(config.get("alpha_pattern") or {}, path)
    alpha = float(config.get("lora_alpha", rank) if alpha is None else alpha)
    if config.get("use_rslora"):
        alpha = alpha * rank ** 0.5  # rsLoRA scales by alpha/√r; the same layer with scale alpha'/r
    return alpha


def diffusers_configs(header: Mapping[str, str]) -> dict[str, dict]:
    """Per-component LoraConfig kwargs from diffusers' `lora_adapter_metadata` header entry ({} when absent)."""
    raw = header.get(DIFFUSERS_METADATA_KEY)
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError:
        raise LatentDiffError(f"the LoRA file's {DIFFUSERS_METADATA_KEY} header entry is not valid JSON") from None
    if not isinstance(flat, dict):
        raise LatentDiffError(f"the LoRA file's {DIFFUSERS_METADATA_KEY} header entry is not a JSON object")
    out: dict[str, dict] = {}
    for key, value in flat.items():
        component, field = split_key(key)
        if component in COMPONENTS and field:
            out.setdefault(component, {})[field] = value
        else:  # one model's save_lora_adapter writes its LoraConfig unprefixed: it holds for every component
            out.setdefault(ANY_COMPONENT, {})[key] = value
    return out


def _module_alpha(name: str, rank: int, alphas: Mapping[str, float], configs: Mapping[str, dict]) -> float:
    """A module's alpha: its own `.alpha` tensor, else its component's header LoraConfig, else the rank (scale 1)."""
    if name in alphas:
        return alphas[name]
    component, path = _component_of(name)
    config = configs.get(component) or configs.get(ANY_COMPONENT)
    return _config_alpha(config, path, rank) if config else float(rank)


def from_peft(tensors: Mapping[str, torch.Tensor], header: Mapping[str, str]) -> LoraState:
    """`unet.<path>.lora_A.weight` / `.lora_B.weight` (+ optional `.alpha` tensors or diffusers header config); the
    mixed layout of diffusers' training scripts (`to_q.lora.down`, `q_proj.lora_linear_layer.down`, rest lora_A) too."""
    configs = diffusers_configs(header)
    downs, ups, alphas = {}, {}, {}
    for key, value in tensors.items():
        m = re.fullmatch(r"(.+)\.lora_([AB])(?:\.[\w-]+)?\.weight", key)
        d = re.fullmatch(r"(.+\.(?:lora|lora_linear_layer))\.(down|up)\.weight", key)
        if m:
            (downs if m.group(2) == "A" else ups)[m.group(1)] = (key, value)
        elif d:  # convert_state_dict_to_diffusers renames attention layers only; the rest keep lora_A/lora_B
            (downs if d.group(2) == "down" else ups)[_old_module(d.group(1))] = (key, value)
        elif key.endswith(".alpha"):
            alphas[key[: -len(".alpha")]] = float(value.item())
        elif ".lora_B" in key and key.endswith(".bias"):
            raise LatentDiffError(f"LoRA with bias terms is not supported (key {key})")
        else:
            raise LatentDiffError(f"unexpected tensor {key} in a peft LoRA file")
    return _pair(downs, ups, lambda name, rank: _module_alpha(name, rank, alphas, configs))


def _pair(downs: Mapping, ups: Mapping, alpha_of) -> LoraState:
    """Join down/up tensors by module name into LoraModules keyed '<component>.<path>'."""
    state: LoraState = {}
    for name, (key, down) in downs.items():
        if name not in ups:
            raise LatentDiffError(f"LoRA key {key} has no matching up/lora_B tensor")
        up = ups[name][1]
        if down.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != down.shape[0]:
            raise LatentDiffError(f"LoRA key {key}: down {tuple(down.shape)} and up {tuple(up.shape)} do not form a low-rank pair")
        component, path = _component_of(name)
        state[f"{component}.{path}"] = LoraModule(down, up, alpha_of(name, int(down.shape[0])), key)
    for name, (key, _) in ups.items():
        if name not in downs:
            raise LatentDiffError(f"LoRA key {key} has no matching down/lora_A tensor")
    return state


# ---- old diffusers attention-processor layout (diffusers ≤ 0.20) ----------------------------------------------

_OLD_UNET = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out.0"}
_OLD_TEXT = {"to_q_lora": "q_proj", "to_k_lora": "k_proj", "to_v_lora": "v_proj", "to_out_lora": "out_proj"}


def _old_module(name: str) -> str:
    """'unet.….attn1.processor.to_q_lora' → 'unet.….attn1.to_q'; '….proj_in.lora' → '….proj_in'."""
    name = name.removesuffix(".lora").removesuffix(".lora_linear_layer")
    head, _, last = name.rpartition(".")
    table = _OLD_TEXT if _component_of(name)[0] == "text_encoder" else _OLD_UNET
    if last in table:
        return f"{head.removesuffix('.processor')}.{table[last]}"
    return name


def from_diffusers_old(tensors: Mapping[str, torch.Tensor], header: Mapping[str, str] | None = None) -> LoraState:
    """`….processor.to_q_lora.down.weight` / `….lora.up.weight` layouts (the latter is what diffusers' training
    scripts write through convert_state_dict_to_diffusers); alpha from `.alpha` keys, the header's
    `lora_adapter_metadata`, or = rank."""
    configs = diffusers_configs(header or {})
    downs, ups, alphas = {}, {}, {}
    for key, value in tensors.items():
        m = re.fullmatch(r"(.+)\.(down|up)\.weight", key)
        if m:
            (downs if m.group(2) == "down" else ups)[_old_module(m.group(1))] = (key, value)
        elif key.endswith(".alpha"):
            alphas[_old_module(key[: -len(".alpha")])] = float(value.item())
        else:
            raise LatentDiffError(f"unexpected tensor {key} in a diffusers LoRA file")
    return _pair(downs, ups, lambda name, rank: _module_alpha(name, rank, alphas, configs))


# ---- kohya / A1111 ------------------------------------------------------------------------------------------------

def kohya_name(key: str) -> str:
    """'unet.down_blocks.1.attentions.0.proj_in' → 'lora_unet_down_blocks_1_attentions_0_proj_in'."""
    component, path = split_key(key)
    return KOHYA_PREFIX[component] + path.replace(".", "_")


def kohya_component(name: str) -> str:
    """The component a kohya module name belongs to (lora_unet_ → unet, lora_te1_/lora_te_ → text_encoder, ...)."""
    return next(c for p, c in KOHYA_COMPONENTS if name.startswith(p))


def from_kohya(tensors: Mapping[str, torch.Tensor], module_keys: Iterable[str], aliases: Mapping[str, str] | None = None) -> LoraState:
    """`lora_unet_…` names mapped back through the model's own module keys (underscores are ambiguous);
    `aliases` adds more kohya names per module key (SDXL: te1 and the U-Net's SGM names)."""
    index = {kohya_name(k): k for k in module_keys} | dict(aliases or {})
    downs, ups, alphas = {}, {}, {}
    for key, value in tensors.items():
        name, _, rest = key.partition(".")
        if name not in index:
            raise LatentDiffError(f"LoRA key {key} names no layer of this model")
        module = index[name]
        if rest == "lora_down.weight":
            downs[module] = (key, value)
        elif rest == "lora_up.weight":
            ups[module] = (key, value)
        elif rest == "alpha":
            alphas[module] = float(value.item())
        else:
            raise LatentDiffError(f"unexpected tensor {key} in a kohya LoRA file")
    return _pair(downs, ups, lambda name, rank: alphas.get(name, float(rank)))


def to_kohya(state: LoraState, names: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """kohya/A1111 tensors with each module's TRUE alpha (diffusers' converter writes alpha = rank instead); `names`
    gives a module key another kohya name (SDXL's lora_te1_ and SGM U-Net names, lora.sdxl), else kohya_name's."""
    out = {}
    for key, m in state.items():
        name = (names or {}).get(key) or kohya_name(key)
        out[f"{name}.lora_down.weight"] = m.down
        out[f"{name}.lora_up.weight"] = m.up
        out[f"{name}.alpha"] = torch.tensor(float(m.alpha))
    return out


def to_peft(state: LoraState) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """peft/diffusers tensors plus the `lora_adapter_metadata` header entry that carries rank and alpha per module."""
    tensors, configs = {}, {}
    for key, m in state.items():
        tensors[f"{key}.lora_A.weight"] = m.down
        tensors[f"{key}.lora_B.weight"] = m.up
    for component in COMPONENTS:  # module paths relative to the component; text ones without "text_model." so
        # that the patterns match both transformers < 5 (text_model.encoder…) and ≥ 5 (encoder…) module paths
        modules = {split_key(k)[1].removeprefix("text_model."): m for k, m in state.items() if split_key(k)[0] == component}
        if modules:
            configs[component] = lora_config_kwargs(modules)
    flat = {f"{c}.{k}": v for c, cfg in configs.items() for k, v in cfg.items()}
    return tensors, {DIFFUSERS_METADATA_KEY: json.dumps(flat, sort_keys=True)}


def lora_config_kwargs(modules: Mapping[str, LoraModule]) -> dict:
    """peft LoraConfig kwargs reproducing each module's rank and alpha: the commonest as defaults, the rest as patterns."""
    r = Counter(m.rank for m in modules.values()).most_common(1)[0][0]
    alpha = Counter(m.alpha for m in modules.values()).most_common(1)[0][0]
    return {
        "r": r, "lora_alpha": alpha, "target_modules": sorted(modules),
        "rank_pattern": {p: m.rank for p, m in modules.items() if m.rank != r},
        "alpha_pattern": {p: m.alpha for p, m in modules.items() if m.alpha != alpha},
    }


def read_state(tensors: Mapping[str, torch.Tensor], header: Mapping[str, str], module_keys: Iterable[str] | None = None,
               aliases: Mapping[str, str] | None = None) -> tuple[LoraState, str]:
    """Any supported layout → (LoraState, format name); kohya needs the model's module keys to undo underscores."""
    fmt = detect_format(tensors)
    if fmt == "peft":
        return from_peft(tensors, header), fmt
    if fmt == "diffusers_old":
        return from_diffusers_old(tensors, header), fmt
    if module_keys is None:
        raise LatentDiffError("reading a kohya LoRA needs the model's layer names")
    return from_kohya(tensors, module_keys, aliases), fmt
