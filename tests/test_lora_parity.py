"""With the same LoRA file, our image equals diffusers' `load_lora_weights` image (≤ 2/255 per pixel), both formats."""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from latentdiff.lora.io import read_lora, save_lora
from latentdiff.lora.attach import component_modules
from latentdiff.pipelines.samplers import make_scheduler
from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline

PROMPT = "a watercolor fox in the snow"
KW = dict(num_inference_steps=3, guidance_scale=6.0, height=64, width=64)
# The tiny SD1 layout has transformers at down_blocks.1, mid_block and up_blocks.0 (2 layers there).
SD1_ATTENTION_BLOCKS = ["down_blocks_1_attentions_0", "mid_block_attentions_0",
                        "up_blocks_0_attentions_0", "up_blocks_0_attentions_1"]
UNET_LAYERS = ["attn1_to_q", "attn1_to_k", "attn1_to_v", "attn1_to_out_0", "attn2_to_q", "attn2_to_k", "attn2_to_v",
               "attn2_to_out_0", "ff_net_0_proj", "ff_net_2"]
TEXT_LAYERS = ["self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2"]


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def _dims(module):
    if isinstance(module, torch.nn.Conv2d):
        return module.in_channels, module.out_channels, True
    return module.in_features, module.out_features, False


def _layer(components, dotted: str):
    """The layer a kohya name points at, looked up by its diffusers path (for in/out sizes only)."""
    if dotted.startswith("text_model."):
        return components.text_encoder.get_submodule(dotted.removeprefix("text_model."))
    return components.unet.get_submodule(dotted)


def kohya_file(path, components, *, rank=4, alpha=2.0, seed=0, blocks=SD1_ATTENTION_BLOCKS, text=True):
    """A LoRA laid out as kohya's sd-scripts write it: lora_unet_…/lora_te_… with lora_down, lora_up and a scalar alpha."""
    g = torch.Generator().manual_seed(seed)
    names = {}
    for b in blocks:
        level, _, idx = b.rpartition("_attentions_")
        base = f"{level.replace('_blocks_', '_blocks.')}.attentions.{idx}"
        names[f"lora_unet_{b}_proj_in"] = f"{base}.proj_in"
        names[f"lora_unet_{b}_proj_out"] = f"{base}.proj_out"
        for layer in UNET_LAYERS:
            dotted = layer.replace("attn1_", "attn1.").replace("attn2_", "attn2.").replace("to_out_0", "to_out.0") \
                          .replace("ff_net_0_proj", "ff.net.0.proj").replace("ff_net_2", "ff.net.2")
            names[f"lora_unet_{b}_transformer_blocks_0_{layer}"] = f"{base}.transformer_blocks.0.{dotted}"
    if text:
        for i in range(components.text_encoder.config.num_hidden_layers):
            for layer in TEXT_LAYERS:
                dotted = layer.replace("self_attn_", "self_attn.").replace("mlp_", "mlp.")
                names[f"lora_te_text_model_encoder_layers_{i}_{layer}"] = f"text_model.encoder.layers.{i}.{dotted}"
    tensors = {}
    for name, dotted in names.items():
        fan_in, fan_out, conv = _dims(_layer(components, dotted))
        down = torch.randn(rank, fan_in, generator=g) * 0.2
        up = torch.randn(fan_out, rank, generator=g) * 0.2  # nonzero: a trained LoRA, not a fresh init
        if conv:
            down, up = down[:, :, None, None], up[:, :, None, None]
        tensors[f"{name}.lora_down.weight"] = down.half()
        tensors[f"{name}.lora_up.weight"] = up.half()
        tensors[f"{name}.alpha"] = torch.tensor(alpha).half()
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                                            "ss_network_alpha": str(alpha)})
    return path


def peft_file(path, components, *, rank=4, alpha=8.0, seed=1):
    """A diffusers-style file: unet.…lora_A/lora_B + text_encoder.…, with rank/alpha (and one per-module pattern) in the header."""
    g = torch.Generator().manual_seed(seed)
    unet_paths = [f"{blk}.transformer_blocks.0.{p}" for blk in ("down_blocks.1.attentions.0", "mid_block.attentions.0",
                                                                "up_blocks.0.attentions.1")
                  for p in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                            "attn2.to_v", "attn2.to_out.0")]
    text_paths = [f"text_model.encoder.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
    odd = unet_paths[0]  # rank 2, alpha 5 through rank_pattern / alpha_pattern
    tensors = {}
    for prefix, paths in (("unet", unet_paths), ("text_encoder", text_paths)):
        for p in paths:
            r = 2 if p == odd else rank
            fan_in, fan_out, _ = _dims(_layer(components, p))
            tensors[f"{prefix}.{p}.lora_A.weight"] = torch.randn(r, fan_in, generator=g) * 0.2
            tensors[f"{prefix}.{p}.lora_B.weight"] = torch.randn(fan_out, r, generator=g) * 0.2
    meta = {"unet.r": rank, "unet.lora_alpha": alpha, "unet.target_modules": sorted(unet_paths),
            "unet.rank_pattern": {odd: 2}, "unet.alpha_pattern": {odd: 5.0},
            "text_encoder.r": rank, "text_encoder.lora_alpha": alpha,
            "text_encoder.target_modules": sorted({p.rsplit(".", 1)[1] for p in text_paths})}
    save_file(tensors, str(path), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(meta)})
    return path


class Reference:
    """diffusers' StableDiffusionPipeline on the same folder; LoRAs loaded with its own load_lora_weights."""

    def __init__(self, folder, components):
        self.pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, local_files_only=True)
        self.pipe.set_progress_bar_config(disable=True)
        self.scheduler_config = components.scheduler_config

    def __call__(self, loras=(), weights=None, sampler="euler", seed=3):
        self.pipe.unload_lora_weights()
        self.pipe.scheduler = make_scheduler(sampler, self.scheduler_config)
        names = []
        for i, path in enumerate(loras):
            self.pipe.load_lora_weights(str(path), adapter_name=f"l{i}")
            names.append(f"l{i}")
        if weights is not None:
            self.pipe.set_adapters(names, adapter_weights=list(weights))
        return self.pipe(PROMPT, generator=torch.Generator("cpu").manual_seed(seed), **KW).images[0]


class Ours:
    """Our pipeline on the same folder; every call starts from the base model with only the given LoRAs."""

    def __init__(self, folder):
        self.pipe = LatentDiffusionPipeline.from_pretrained(folder, dtype="fp32")

    def __call__(self, loras=(), weights=None, sampler="euler", seed=3):
        for name in list(self.pipe.loras.adapters):
            self.pipe.loras.remove(name)
        for i, path in enumerate(loras):
            self.pipe.load_lora(path, name=f"l{i}", weight=1.0 if weights is None else weights[i])
        return self.pipe(PROMPT, sampler=sampler, seed=seed, progress=False, **KW).images[0]


@pytest.fixture(scope="module")
def reference(tiny_folder, tiny_sd1):
    return Reference(tiny_folder, tiny_sd1)


@pytest.fixture(scope="module")
def ours(tiny_folder):
    return Ours(tiny_folder)


@pytest.fixture(scope="module")
def base_image(ours):
    return ours()


@pytest.fixture(scope="module")
def kohya_lora(tiny_sd1, tmp_path_factory):
    return kohya_file(tmp_path_factory.mktemp("lora") / "style.safetensors", tiny_sd1, rank=4, alpha=2.0)  # scale 0.5


@pytest.fixture(scope="module")
def kohya_image(ours, kohya_lora):
    return ours([kohya_lora])


def test_kohya_file_matches_diffusers(reference, tiny_sd1, kohya_lora, kohya_image, base_image):
    want = reference([kohya_lora])
    assert np.abs(pixels(want) - pixels(kohya_image)).max() <= 2
    assert np.abs(pixels(kohya_image) - pixels(base_image)).mean() > 3  # the LoRA really changes the picture
    lora = read_lora(kohya_lora, component_modules(tiny_sd1.unet, tiny_sd1.text_encoder))
    assert lora.format == "kohya" and len(lora.state) == 4 * 12 + 2 * 6 and {m.alpha for m in lora.state.values()} == {2.0}


def test_peft_file_with_alpha_and_rank_patterns_matches_diffusers(reference, ours, tiny_sd1, tmp_path, base_image):
    path = peft_file(tmp_path / "pytorch_lora_weights.safetensors", tiny_sd1, rank=4, alpha=8.0)
    state = read_lora(path).state
    odd = state["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert (odd.rank, odd.alpha) == (2, 5.0) and state["unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v"].scale == 2.0
    want, got = reference([path]), ours([path])
    assert np.abs(pixels(want) - pixels(got)).max() <= 2
    assert np.abs(pixels(got) - pixels(base_image)).mean() > 3


def test_two_adapters_with_weights_match_diffusers_set_adapters(reference, ours, tiny_sd1, tmp_path, kohya_lora):
    b = peft_file(tmp_path / "b.safetensors", tiny_sd1, rank=4, alpha=2.0, seed=6)
    want = reference([kohya_lora, b], weights=[0.7, -0.5], sampler="dpmpp_2m")
    got = ours([kohya_lora, b], weights=[0.7, -0.5], sampler="dpmpp_2m")
    assert np.abs(pixels(want) - pixels(got)).max() <= 2
    only_b = reference([b], weights=[-0.5], sampler="dpmpp_2m")
    ours.pipe.set_loras({"l1": -0.5})  # switch the kohya one off without reloading anything
    got_b = ours.pipe(PROMPT, sampler="dpmpp_2m", seed=3, progress=False, **KW).images[0]
    assert np.abs(pixels(only_b) - pixels(got_b)).max() <= 2
    assert np.abs(pixels(got_b) - pixels(got)).mean() > 1


def test_diffusers_loads_our_peft_and_kohya_output(reference, tiny_sd1, tmp_path, kohya_lora, kohya_image):
    state = read_lora(kohya_lora, component_modules(tiny_sd1.unet, tiny_sd1.text_encoder)).state
    for fmt in ("peft", "kohya"):
        path = save_lora(state, tmp_path / f"ours_{fmt}.safetensors", format=fmt)
        want = reference([path])
        assert np.abs(pixels(want) - pixels(kohya_image)).max() <= 2, fmt


def test_sd2_v_prediction_kohya_matches_diffusers(tiny_folder_sd2, tiny_sd2, tmp_path):
    blocks = ["down_blocks_0_attentions_0", "down_blocks_1_attentions_0", "mid_block_attentions_0", "up_blocks_1_attentions_1"]
    path = kohya_file(tmp_path / "sd2.safetensors", tiny_sd2, rank=8, alpha=1.0, seed=2, blocks=blocks)
    want = Reference(tiny_folder_sd2, tiny_sd2)([path])
    got = Ours(tiny_folder_sd2)([path])
    assert np.abs(pixels(want) - pixels(got)).max() <= 2


def test_file_written_by_diffusers_save_lora_weights_loads(reference, ours, kohya_lora, kohya_image, tmp_path):
    from peft.utils import get_peft_model_state_dict

    reference([kohya_lora])  # diffusers holds the kohya LoRA as adapter "l0"; write it the way its training scripts do
    pipe = reference.pipe
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(pipe.unet, adapter_name="l0"),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder, adapter_name="l0"),
        unet_lora_adapter_metadata=pipe.unet.peft_config["l0"].to_dict(),
        text_encoder_lora_adapter_metadata=pipe.text_encoder.peft_config["l0"].to_dict())
    path = tmp_path / "pytorch_lora_weights.safetensors"
    assert read_lora(path).format == "peft"
    want, got = reference([path]), ours([path])
    assert np.abs(pixels(want) - pixels(got)).max() <= 2
    assert np.abs(pixels(got) - pixels(kohya_image)).max() <= 2  # the same LoRA as the kohya file, alpha kept


def test_diffusers_training_script_file_applies_alpha_over_rank(reference, ours, base_image, tmp_path):
    """Written as diffusers' train_dreambooth_lora.py does: attention targets, convert_state_dict_to_diffusers keys
    (`to_q.lora.down.weight`, `q_proj.lora_linear_layer.down.weight`) and `lora_adapter_metadata` with lora_alpha ≠ r
    (U-Net 2/4, text 8/4); diffusers scales by alpha/r, the old code by 1."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    pipe = reference.pipe
    pipe.unload_lora_weights()
    unet_config = LoraConfig(r=4, lora_alpha=2, target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    text_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    inject_adapter_in_model(unet_config, pipe.unet)
    inject_adapter_in_model(text_config, pipe.text_encoder)  # what transformers' add_adapter does (it wants peft ≥ 0.22)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():  # a trained LoRA, not a fresh (B = 0) one
        for model in (pipe.unet, pipe.text_encoder):
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder)),
        unet_lora_adapter_metadata=unet_config.to_dict(), text_encoder_lora_adapter_metadata=text_config.to_dict())
    path = tmp_path / "pytorch_lora_weights.safetensors"
    lora = read_lora(path)
    keys = {m.source_key for m in lora.state.values()}
    assert all(k.endswith((".lora.down.weight", ".lora_linear_layer.down.weight")) for k in keys) and lora.format == "diffusers_old"
    assert len(lora.state) == 4 * 8 + 2 * 4
    assert {k.split(".")[0]: m.scale for k, m in lora.state.items()} == {"unet": 0.5, "text_encoder": 2.0}
    want, got = reference([path]), ours([path])
    assert np.abs(pixels(want) - pixels(got)).max() <= 2
    assert np.abs(pixels(got) - pixels(base_image)).mean() > 3


def test_mixed_training_script_layout_reads_every_module(reference, kohya_lora, tmp_path):
    """convert_state_dict_to_diffusers renames attention layers only; with ff/proj targets too the file mixes
    `lora.down` and `lora_A` keys. All are read, with the metadata's alpha (diffusers' own loader drops the renamed
    ones when the first key is a lora_A one, so there is no diffusers image to compare with)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    reference([kohya_lora])
    pipe = reference.pipe
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet, adapter_name="l0")),
        unet_lora_adapter_metadata=pipe.unet.peft_config["l0"].to_dict())
    lora = read_lora(tmp_path / "pytorch_lora_weights.safetensors")
    keys = {m.source_key for m in lora.state.values()}
    assert any(k.endswith(".to_q.lora.down.weight") for k in keys) and any(k.endswith(".ff.net.2.lora_A.weight") for k in keys)
    assert len(lora.state) == 4 * 12 and {m.alpha for m in lora.state.values()} == {2.0}


def test_unprefixed_adapter_metadata_gives_alpha(reference, kohya_lora, tmp_path):
    """One model's `save_lora_adapter` writes unprefixed keys and an unprefixed LoraConfig; alpha comes from it."""
    reference([kohya_lora])
    reference.pipe.unet.save_lora_adapter(str(tmp_path), adapter_name="l0")
    path = tmp_path / "pytorch_lora_weights.safetensors"
    state = read_lora(path).state
    assert len(state) == 4 * 12 and all(k.startswith("unet.") for k in state)
    assert {m.alpha for m in state.values()} == {2.0} and {m.scale for m in state.values()} == {0.5}
