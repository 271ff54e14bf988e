"""LoRA files (both layouts, true alpha, header metadata, one-line errors) and adapter switching/fusing on our U-Net."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from latentdiff.cli import main
from latentdiff.errors import LatentDiffError
from latentdiff.lora.attach import component_modules, random_state
from latentdiff.lora.formats import kohya_name, to_kohya
from latentdiff.lora.io import LoraMetadata, read_lora, save_lora
from latentdiff.lora.manager import LoraManager
from latentdiff.pipelines.png_metadata import read_png_params

from conftest import tiny_components

ATTN1_Q = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
KOHYA_Q = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"


@pytest.fixture(scope="module")
def model():
    return tiny_components("sd1", seed=4)


@pytest.fixture(scope="module")
def keys(model):
    return list(component_modules(model.unet, model.text_encoder))


@pytest.fixture()
def manager(model):
    """A manager on the shared tiny model; every adapter is removed afterwards (the base output comes back exactly)."""
    m = LoraManager(model.unet, model.text_encoder)
    yield m
    m.unfuse()
    for name in list(m.adapters):
        m.remove(name)


@pytest.fixture()
def inputs(model):
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700]), torch.randn(2, 77, 32, generator=g)


def unet_out(model, inputs):
    with torch.no_grad():
        return model.unet(*inputs)


def state_for(model, seed=0, rank=4, alpha=2.0, text=True):
    return random_state(model.unet, model.text_encoder, unet_targets=("attention", "proj"), rank=rank, alpha=alpha,
                        text_targets=("attention", "mlp") if text else (), seed=seed, std=0.3)


# ---- files ------------------------------------------------------------------------------------------------------

def test_kohya_round_trip_keeps_true_alpha_and_metadata(model, keys, tmp_path):
    state = state_for(model, rank=4, alpha=1.0)
    meta = LoraMetadata(base_model="models/tiny", base_model_hash="0123456789", kind="sd1", rank=4, alpha=1.0,
                        targets="attention,proj", steps=120, dataset_size=24, resolution=64)
    path = save_lora(state, tmp_path / "k.safetensors", format="kohya", metadata=meta)
    with safe_open(str(path), "pt") as f:
        header, names = f.metadata(), set(f.keys())
        assert f.get_tensor(f"{KOHYA_Q}.alpha").item() == 1.0  # the true alpha, not the rank (diffusers' converter writes 4)
    assert f"{KOHYA_Q}.lora_down.weight" in names and "lora_te_text_model_encoder_layers_1_mlp_fc2.lora_up.weight" in names
    assert header["ss_network_dim"] == "4" and header["ss_network_alpha"] == "1" and header["ss_num_train_images"] == "24"
    back = read_lora(path, keys)
    assert back.format == "kohya" and set(back.state) == set(state)
    assert back.metadata.steps == 120 and back.metadata.base_model_hash == "0123456789" and back.metadata.alpha == 1.0
    for k, m in state.items():
        assert torch.equal(back.state[k].down, m.down) and torch.equal(back.state[k].up, m.up) and back.state[k].alpha == 1.0


def test_peft_round_trip_carries_per_module_rank_and_alpha(model, keys, tmp_path):
    state = state_for(model, rank=4, alpha=8.0)
    small = random_state(model.unet, None, unet_targets=("to_q",), rank=2, alpha=3.0, seed=1)
    state.update({k: small[k] for k in list(small)[:2]})
    path = save_lora(state, tmp_path / "pytorch_lora_weights.safetensors", format="peft", metadata=LoraMetadata(rank=4, alpha=8.0))
    with safe_open(str(path), "pt") as f:
        config = json.loads(f.metadata()["lora_adapter_metadata"])
        assert f"{ATTN1_Q}.lora_A.weight" in set(f.keys())
    assert config["unet.r"] == 4 and config["unet.lora_alpha"] == 8.0
    assert config["unet.alpha_pattern"] == {k.removeprefix("unet."): 3.0 for k in list(small)[:2]}
    back = read_lora(tmp_path)  # a folder with pytorch_lora_weights.safetensors works as in diffusers
    assert back.format == "peft"
    assert {k: (m.rank, m.alpha) for k, m in back.state.items()} == {k: (m.rank, m.alpha) for k, m in state.items()}


def test_old_diffusers_processor_layout_reads(model, keys, tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight": torch.randn(4, 64, generator=g),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight": torch.randn(64, 4, generator=g),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight": torch.randn(4, 64, generator=g),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight": torch.randn(64, 4, generator=g),
        "text_encoder.text_model.encoder.layers.0.self_attn.to_k_lora.down.weight": torch.randn(4, 32, generator=g),
        "text_encoder.text_model.encoder.layers.0.self_attn.to_k_lora.up.weight": torch.randn(32, 4, generator=g),
    }
    save_file(tensors, str(tmp_path / "old.safetensors"))
    lora = read_lora(tmp_path / "old.safetensors")
    assert lora.format == "diffusers_old"
    assert set(lora.state) == {ATTN1_Q, ATTN1_Q.replace("to_q", "to_out.0"), "text_encoder.text_model.encoder.layers.0.self_attn.k_proj"}
    assert all(m.alpha == 4.0 for m in lora.state.values())  # no alpha stored: alpha = rank, as diffusers reads it


@pytest.mark.parametrize("tensors, message", [
    ({"lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 64, 1, 1),
      "lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight": torch.ones(64, 4, 1, 1)},
     "LoRA key lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight names no layer of this model"),
    ({f"{KOHYA_Q}.lora_down.weight": torch.zeros(4, 64), f"{KOHYA_Q}.lora_up.weight": torch.ones(64, 8)},
     f"LoRA key {KOHYA_Q}.lora_down.weight: down (4, 64) and up (64, 8) do not form a low-rank pair"),
    ({f"{KOHYA_Q}.lora_down.weight": torch.zeros(4, 48), f"{KOHYA_Q}.lora_up.weight": torch.ones(64, 4)},
     f"LoRA key {KOHYA_Q}.lora_down.weight has shapes down (4, 48), up (64, 4); the model's layer needs (4, 64), (64, 4)"),
    ({f"{ATTN1_Q}.lora_A.weight": torch.zeros(4, 64)}, f"LoRA key {ATTN1_Q}.lora_A.weight has no matching up/lora_B tensor"),
    ({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 32)}, "this is an SDXL LoRA"),
    ({f"{KOHYA_Q}.hada_w1_a": torch.zeros(4, 64)}, "LoHa adapters are not supported"),
    ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4)}, "not a LoRA file"),
])
def test_mismatched_files_fail_with_one_line_naming_the_key(model, tmp_path, tensors, message):
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    manager = LoraManager(model.unet, model.text_encoder)
    with pytest.raises(LatentDiffError) as e:
        manager.load(path)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not manager.adapters and not any("lora" in k for k in model.unet.state_dict())  # nothing half-attached


def test_unreadable_files_fail_with_one_line(model, tmp_path):
    manager = LoraManager(model.unet, model.text_encoder)
    (tmp_path / "x.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}garbage")
    (tmp_path / "x.pt").write_bytes(b"pickle")
    for path, message in [(tmp_path / "x.safetensors", "is not a valid safetensors file"), (tmp_path / "x.pt", "only .safetensors"),
                          (tmp_path / "missing.safetensors", "no such LoRA file")]:
        with pytest.raises(LatentDiffError, match=message):
            manager.load(path)


# ---- adapters on the model --------------------------------------------------------------------------------------

def test_weights_switching_disable_and_remove(model, manager, inputs, tmp_path):
    base = unet_out(model, inputs)
    a, b = state_for(model, seed=1, text=False), state_for(model, seed=2, text=False)
    half_a = {k: type(m)(m.down, m.up * 0.5, m.alpha) for k, m in a.items()}
    save_lora(a, tmp_path / "a.safetensors", format="kohya")
    save_lora(b, tmp_path / "b.safetensors", format="peft")

    m = manager
    assert m.load(tmp_path / "a.safetensors") == "a"
    out_a = unet_out(model, inputs)
    assert (out_a - base).abs().mean() > 1e-2
    m.load(tmp_path / "b.safetensors", name="b", weight=0.0)
    assert torch.allclose(unet_out(model, inputs), out_a, atol=1e-6)  # weight 0: b loaded but silent

    m.set_weights({"a": 0.5})
    at_half = unet_out(model, inputs)
    m.add(half_a, name="half")
    m.set_weights({"half": 1.0})
    assert torch.allclose(at_half, unet_out(model, inputs), atol=1e-5)  # weight scales the delta

    m.set_weights({"b": 1.0})
    out_b = unet_out(model, inputs)
    m.set_enabled(False)
    assert torch.equal(unet_out(model, inputs), base)
    m.set_weights({"a": 1.0, "b": 1.0})
    both = unet_out(model, inputs)
    assert (both - out_a).abs().mean() > 1e-2 and (both - out_b).abs().mean() > 1e-2
    assert [x.name for x in m.active] == ["a", "b"]
    m.remove("a")
    assert torch.allclose(unet_out(model, inputs), out_b, atol=1e-6)
    m.remove("b")
    assert torch.equal(unet_out(model, inputs), base)
    with pytest.raises(LatentDiffError, match="no LoRA named 'a' is loaded"):
        m.set_weights({"a": 1.0})


def test_fuse_matches_unfused_and_unfuse_restores_base_bit_for_bit(model, manager, inputs):
    base_weights = {k.replace(".base_layer", ""): v.clone() for k, v in model.unet.state_dict().items()}
    m = manager
    m.add(state_for(model, seed=1), name="a", weight=0.8)
    m.add(state_for(model, seed=2), name="b", weight=-0.3)
    live = unet_out(model, inputs)
    m.fuse()
    assert torch.allclose(unet_out(model, inputs), live, atol=1e-4)
    m.set_weights({"a": 1.0})  # changing weights while fused re-fuses with the new ones
    m.unfuse()
    only_a = unet_out(model, inputs)
    m.fuse()
    assert torch.allclose(unet_out(model, inputs), only_a, atol=1e-4)
    m.unfuse()
    m.set_enabled(False)
    after = {k: v for k, v in model.unet.state_dict().items() if "lora_" not in k}
    after = {k.replace(".base_layer", ""): v for k, v in after.items()}
    assert after.keys() == base_weights.keys()
    assert all(torch.equal(after[k], v) for k, v in base_weights.items())


def test_pipeline_records_loras_and_cli_lora_flag(tiny_folder, tmp_path):
    from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")
    path = save_lora(state_for(pipe.components, seed=3), tmp_path / "ink.safetensors", format="kohya")
    name = pipe.load_lora(path, weight=0.6)
    assert name == "ink"
    out = pipe("a cat", num_inference_steps=2, seed=1, height=64, width=64, progress=False)
    assert out.params[0].loras == [[str(path), 0.6]]
    pipe.disable_loras()
    assert pipe("a cat", num_inference_steps=1, seed=1, height=64, width=64, progress=False).params[0].loras == []

    png = tmp_path / "out.png"
    assert main(["generate", "a cat", "--model", str(tiny_folder), "--steps", "2", "--width", "64", "--height", "64",
                 "--dtype", "fp32", "--lora", f"{path}:0.6", "--out", str(png)]) == 0
    params = read_png_params(png)
    assert params.loras == [[str(path), 0.6]] and "<lora:ink:0.6>" in params.to_a1111()
    assert main(["generate", "a cat", "--model", str(tiny_folder), "--steps", "1", "--dtype", "fp32",
                 "--lora", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "x.png")]) == 2


def test_kohya_names_follow_sd_scripts(keys):
    assert kohya_name(ATTN1_Q) == KOHYA_Q
    assert kohya_name("text_encoder.text_model.encoder.layers.0.self_attn.q_proj") == "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    assert kohya_name("unet.up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_out.0") in {kohya_name(k) for k in keys}
    assert to_kohya({}) == {}
