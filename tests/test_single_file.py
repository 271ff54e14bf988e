"""Single-file LDM checkpoints: key maps both ways, parity with diffusers' own conversion, configs, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils as dsf
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from latentdiff.checkpoints import ldm_keys as K
from latentdiff.checkpoints.presets import ASSETS_DIR, read_preset
from latentdiff.checkpoints.single_file import (
    detect_kind, load_state_dict, read_single_file, text_key_prefix, unet_config, write_single_file,
)
from latentdiff.errors import LatentDiffError


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Distinct random values in every tensor, so that a swapped pair of keys cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def tiny_unet(kind: str) -> UNet2DConditionModel:
    if kind == "sd1":  # SD1 layout: conv projections, the deepest level without attention, 3 levels, 2 resnets
        return UNet2DConditionModel(
            sample_size=8, block_out_channels=(32, 64, 64), layers_per_block=2, norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8)
    return UNet2DConditionModel(  # SD2 layout: linear projections, attention at every level, 2 transformer blocks
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=48, attention_head_dim=[1, 1], use_linear_projection=True, transformer_layers_per_block=2)


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         sample_size=32)


def tiny_text(kind: str) -> CLIPTextModel:
    width = 32 if kind == "sd1" else 48
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=1000, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="quick_gelu" if kind == "sd1" else "gelu",
        bos_token_id=0, eos_token_id=2, pad_token_id=1))


class Tiny:
    """Tiny random diffusers/transformers components of one kind, and an LDM file written from them."""

    def __init__(self, kind: str, folder):
        self.kind = kind
        self.unet = randomize(tiny_unet(kind), 1)
        self.vae = randomize(tiny_vae(), 2)
        self.text = randomize(tiny_text(kind), 3)
        self.path = folder / f"{kind}.safetensors"
        write_single_file(self.path, kind=kind, unet_state=self.unet.state_dict(), vae_state=self.vae.state_dict(),
                          text_state=self.text.state_dict())
        self.ldm = load_file(str(self.path))


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def tiny(request, tmp_path_factory) -> Tiny:
    return Tiny(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def sd1(tmp_path_factory) -> Tiny:
    return Tiny("sd1", tmp_path_factory.mktemp("sd1_only"))


def as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def assert_same(ours: dict, reference: dict) -> None:
    assert sorted(ours) == sorted(reference)
    for k, v in reference.items():
        assert ours[k].dtype == v.dtype and torch.equal(ours[k], v), k


# ---------------------------------------------------------------- tokenizer files


@pytest.mark.parametrize("folder, pad_id", [("tokenizer", 49407), ("tokenizer_sd2", 0)])
def test_tokenizer_gives_the_known_sd_ids(folder, pad_id):
    tok = CLIPTokenizer.from_pretrained(str(ASSETS_DIR / folder), local_files_only=True)
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert tok("a cat", padding="max_length", max_length=6).input_ids == [49406, 320, 2368, 49407, pad_id, pad_id]


# ---------------------------------------------------------------- round trip and parity


def test_round_trip_gives_back_the_same_tensors(tiny):
    parts = read_single_file(tiny.path)
    assert parts.kind == tiny.kind == detect_kind(tiny.ldm)
    assert_same(parts.unet_state, tiny.unet.state_dict())
    assert_same(parts.vae_state, tiny.vae.state_dict())
    assert_same(parts.text_state, tiny.text.state_dict())
    for key in ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "in_channels",
                "out_channels", "cross_attention_dim", "use_linear_projection"):
        assert as_list(parts.unet_config[key]) == as_list(tiny.unet.config[key]), key
    assert parts.unet_config["transformer_layers_per_block"] == (1 if tiny.kind == "sd1" else 2)
    assert parts.unet_config["attention_head_dim"] == (8 if tiny.kind == "sd1" else [1, 1])  # SD1: 8 heads; SD2: 64-d rule
    assert parts.text_config["num_hidden_layers"] == 2 and parts.text_config["num_attention_heads"] == 1
    assert parts.text_config["hidden_act"] == ("quick_gelu" if tiny.kind == "sd1" else "gelu")
    assert parts.tokenizer_dir == ASSETS_DIR / ("tokenizer" if tiny.kind == "sd1" else "tokenizer_sd2")
    # the configs build models into which the converted weights load strictly
    UNet2DConditionModel.from_config(parts.unet_config).load_state_dict(parts.unet_state, strict=True)
    AutoencoderKL.from_config(parts.vae_config).load_state_dict(parts.vae_state, strict=True)
    CLIPTextModel(CLIPTextConfig(**parts.text_config)).load_state_dict(parts.text_state, strict=True)


def test_ldm_layout_of_the_written_file(tiny):
    ldm = tiny.ldm
    if tiny.kind == "sd1":
        assert ldm["model.diffusion_model.output_blocks.2.1.conv.weight"].shape == (64, 64, 3, 3)  # no attention
        assert ldm["model.diffusion_model.output_blocks.5.2.conv.weight"].shape == (64, 64, 3, 3)  # after attention
        assert ldm["model.diffusion_model.input_blocks.1.1.proj_in.weight"].shape == (32, 32, 1, 1)
        assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in ldm
    else:
        assert ldm["model.diffusion_model.input_blocks.1.1.proj_in.weight"].shape == (32, 32)
        assert ldm["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (144, 48)
        assert not ldm["cond_stage_model.model.transformer.resblocks.2.mlp.c_proj.weight"].any()  # unused: identity
        assert ldm["cond_stage_model.model.text_projection"].shape == (48, 48) and "cond_stage_model.model.logit_scale" in ldm
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)


def test_matches_diffusers_own_conversion(tiny):
    parts = read_single_file(tiny.path)
    ldm = dict(tiny.ldm)
    assert_same(parts.unet_state, dsf.convert_ldm_unet_checkpoint(ldm, parts.unet_config))
    assert_same(parts.vae_state, dsf.convert_ldm_vae_checkpoint(ldm, parts.vae_config))
    if tiny.kind == "sd1":
        theirs = dsf.convert_ldm_clip_checkpoint(ldm)
    else:
        theirs = dsf.convert_open_clip_checkpoint(tiny.text, ldm)
        # diffusers drops SD2's unused last resblock by a fixed list naming index 23 (ViT-H); in a tiny model it
        # converts that block and text_projection too, which CLIPTextModel has no place for.
        theirs = {k: v for k, v in theirs.items()
                  if not k.startswith("text_model.encoder.layers.2.") and k != "text_projection.weight"}
    prefix = text_key_prefix()
    theirs = {prefix + k.removeprefix("text_model."): v for k, v in theirs.items() if not k.endswith("position_ids")}
    assert_same(parts.text_state, theirs)


def test_full_size_maps_match_the_real_architectures():
    """SD1.5 / SD2.1 from the shipped presets, on the meta device: every diffusers tensor mapped, configs unchanged."""
    for preset, kind in (("sd15", "sd1"), ("sd21-v", "sd2")):
        cfg = read_preset(preset)
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(cfg["unet"])
            vae = AutoencoderKL.from_config(cfg["vae"])
            text = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
        u_state = unet.state_dict()
        t_state = {k.removeprefix("text_model."): v for k, v in text.state_dict().items()}
        t_layout = K.text_layout_from_diffusers(t_state)
        text_entries = K.clip_entries(t_layout) if kind == "sd1" else K.openclip_entries(t_layout)
        ldm = {**K.to_ldm(u_state, K.unet_entries(K.unet_layout_from_diffusers(u_state)), "U-Net"),
               **K.to_ldm(vae.state_dict(), K.vae_entries(K.vae_layout_from_diffusers(vae.state_dict())), "VAE"),
               **K.to_ldm(t_state, text_entries, "text encoder")}
        assert detect_kind(ldm) == kind
        assert sum(k.startswith(K.UNET) for k in ldm) == 686 and sum(k.startswith(K.VAE) for k in ldm) == 248
        if kind == "sd2":
            assert "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight" in ldm
            assert K.openclip_layout_from_ldm(ldm).num_layers == 23
        layout = K.unet_layout_from_ldm(ldm)
        inferred = unet_config(cfg["unet"], layout)
        assert {k: inferred[k] for k in cfg["unet"]} == cfg["unet"]
        back = K.to_diffusers(ldm, K.unet_entries(layout), "U-Net")
        assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in u_state.items()}


def test_configs_in_metadata_restore_the_exact_model(sd1, tmp_path):
    path = tmp_path / "with_configs.safetensors"
    configs = {"unet": dict(sd1.unet.config), "vae": dict(sd1.vae.config)}
    write_single_file(path, kind="sd1", unet_state=sd1.unet.state_dict(), vae_state=sd1.vae.state_dict(),
                      text_state=sd1.text.state_dict(), dtype=torch.float16, configs=configs)
    parts = read_single_file(path)
    assert parts.unet_config["norm_num_groups"] == 8 and parts.vae_config["norm_num_groups"] == 8
    assert all(v.dtype == torch.float16 for v in parts.unet_state.values())  # stored dtype is kept
    unet = UNet2DConditionModel.from_config(parts.unet_config)
    unet.load_state_dict({k: v.float() for k, v in parts.unet_state.items()}, strict=True)
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 5, 32)
    with torch.no_grad():
        ours = unet.eval()(x, t, ctx).sample
        ref = copy.deepcopy(sd1.unet).half().float()(x, t, ctx).sample  # the reference, rounded to fp16 alike
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- prediction type, inpainting, overrides


def test_prediction_type_argument_then_sidecar_then_epsilon(tiny, tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(tiny.path.read_bytes())
    assert read_single_file(path).prediction_type == "epsilon"
    path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    parts = read_single_file(path)
    assert parts.prediction_type == "v_prediction"
    if tiny.kind == "sd2":  # the 768-v preset
        assert parts.scheduler_config["_class_name"] == "DDIMScheduler" and parts.unet_config["upcast_attention"]
    assert read_single_file(path, prediction_type="epsilon").prediction_type == "epsilon"
    assert parts.scheduler_config["beta_schedule"] == "scaled_linear" and parts.scheduler_config["steps_offset"] == 1


def test_inpainting_unet_and_overrides(sd1, tmp_path):
    ldm = dict(sd1.ldm)
    ldm["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(32, 9, 3, 3)
    save_file(ldm, str(tmp_path / "inpaint.safetensors"))
    parts = read_single_file(tmp_path / "inpaint.safetensors", overrides={"unet": {"norm_num_groups": 8}})
    assert parts.inpainting and parts.unet_config["in_channels"] == 9 and parts.unet_config["norm_num_groups"] == 8
    assert parts.unet_state["conv_in.weight"].shape == (32, 9, 3, 3)


def test_sd1_text_encoder_without_the_text_model_level(sd1, tmp_path):
    old = "cond_stage_model.transformer.text_model."
    ldm = {k.replace(old, "cond_stage_model.transformer."): v for k, v in sd1.ldm.items()}
    save_file(ldm, str(tmp_path / "short.safetensors"))
    assert_same(read_single_file(tmp_path / "short.safetensors").text_state, sd1.text.state_dict())


def test_pickle_only_on_request(sd1, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd1.ldm, "global_step": 1}, path)
    with pytest.raises(LatentDiffError, match="--allow-pickle"):
        read_single_file(path)
    assert_same(read_single_file(path, allow_pickle=True).unet_state, sd1.unet.state_dict())


# ---------------------------------------------------------------- bad input: one line naming the cause


def test_missing_path(tmp_path):
    with pytest.raises(LatentDiffError, match="no such checkpoint file: .*nothing.safetensors"):
        load_state_dict(tmp_path / "nothing.safetensors")


def test_truncated_safetensors(sd1, tmp_path):
    path = tmp_path / "cut.safetensors"
    data = sd1.path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LatentDiffError, match="cut.safetensors is not a valid safetensors file: ") as e:
        read_single_file(path)
    assert "\n" not in str(e.value)


def _expect_error(ldm: dict, tmp_path, pattern: str) -> None:
    path = tmp_path / "bad.safetensors"
    save_file(ldm, str(path))
    with pytest.raises(LatentDiffError, match=pattern) as e:
        read_single_file(path)
    assert "\n" not in str(e.value)


def test_unknown_architectures(sd1, tmp_path):
    sdxl = {"conditioner.embedders.1.model.positional_embedding": torch.zeros(77, 8),
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}
    _expect_error(sdxl, tmp_path, "SDXL")
    _expect_error({"encoder.layer.0.weight": torch.zeros(2)}, tmp_path, r"no Stable Diffusion U-Net .* encoder")
    _expect_error({"conv_in.weight": torch.zeros(2)}, tmp_path, "diffusers U-Net state dict")
    mismatched = {**sd1.ldm, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(1000, 40)}
    _expect_error(mismatched, tmp_path, "text encoder width 40 does not match the U-Net's context width 32")


def test_wrong_shape_missing_and_unexpected_keys(sd1, tmp_path):
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    _expect_error({**sd1.ldm, key: torch.zeros(32, 16)}, tmp_path,
                  rf"U-Net: {key} has shape \(32, 16\), expected \(32, 32\)")
    vae_key = "first_stage_model.decoder.mid.attn_1.v.weight"
    _expect_error({**sd1.ldm, vae_key: torch.zeros(64, 32, 1, 1)}, tmp_path,
                  rf"VAE: {vae_key} has shape \(64, 32, 1, 1\), expected \(64, 64, 1, 1\)")
    gone = "cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.bias"
    _expect_error({k: v for k, v in sd1.ldm.items() if k != gone}, tmp_path, f"text encoder: missing key {gone}")
    stray = "model.diffusion_model.label_emb.0.0.weight"
    _expect_error({**sd1.ldm, stray: torch.zeros(3)}, tmp_path, f"unexpected key {stray}")
    # buffers an LDM file carries for training are not errors, nor VAE attention saved as Linear (2-D)
    q = "first_stage_model.encoder.mid.attn_1.q.weight"
    extras = {q: sd1.ldm[q][:, :, 0, 0], "alphas_cumprod": torch.ones(1000), "model_ema.decay": torch.tensor(0.9999),
              "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None]}
    save_file({**sd1.ldm, **extras}, str(tmp_path / "extras.safetensors"))
    parts = read_single_file(tmp_path / "extras.safetensors")
    to_q = "encoder.mid_block.attentions.0.to_q.weight"
    assert torch.equal(parts.vae_state[to_q], sd1.vae.state_dict()[to_q])


def test_writer_rejects_bad_input(sd1, tmp_path):
    state = dict(unet_state=sd1.unet.state_dict(), vae_state=sd1.vae.state_dict(), text_state=sd1.text.state_dict())
    with pytest.raises(LatentDiffError, match="written as .safetensors"):
        write_single_file(tmp_path / "m.ckpt", kind="sd1", **state)
    with pytest.raises(LatentDiffError, match="unknown checkpoint kind 'sdxl'"):
        write_single_file(tmp_path / "m.safetensors", kind="sdxl", **state)
    vae = {**state["vae_state"], "encoder.extra.weight": torch.zeros(1)}
    with pytest.raises(LatentDiffError, match="VAE: unexpected key encoder.extra.weight"):
        write_single_file(tmp_path / "m.safetensors", kind="sd1", **{**state, "vae_state": vae})
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_presets_are_package_data():
    """The SD presets live inside the package, where pyproject's package-data puts them into wheels."""
    import tomllib

    from latentdiff.checkpoints.presets import PACKAGE_DIR, PRESET_DIR, preset_path
    from latentdiff.checkpoints.single_file import PRESETS

    patterns = tomllib.loads((PACKAGE_DIR.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["latentdiff"]
    packed = {p for pattern in patterns for p in PACKAGE_DIR.glob(pattern)}
    for name in [*PRESETS.values(), "sd21-v"]:
        path = preset_path(name)
        assert path.parent == PRESET_DIR and PRESET_DIR.is_relative_to(PACKAGE_DIR) and path in packed, path
