"""Tiny random models in the real SD layouts, so every test runs on a CPU in seconds."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_addoption(parser):
    """`--device cuda --dtype fp16` runs the parity tests that take `parity_target` on a GPU (the lease plan)."""
    parser.addoption("--device", default="cpu", help="device for the parity tests that take `parity_target` (default cpu)")
    parser.addoption("--dtype", default="fp32", help="their weights' dtype: fp32, fp16, bf16, or a list (fp16,bf16) to run each")


class Target:
    """Where the `parity_target`-taking tests run ours, and how far from diffusers' fp32-on-CPU answer they may be."""

    # About twice what the CPU measured here (2026-11-30): U-Net rel. error bf16 0.015/0.014, fp16 0.0019/0.0017 (sd1/sd2);
    # tiny-pipeline pixels in bf16 max 5-7, mean 0.53-0.74 over four samplers (fp16 pipelines do not run on a CPU).
    REL = {"fp32": 1e-5, "bf16": 3e-2, "fp16": 4e-3}                # U-Net output, relative L2 error
    PIXELS = {"fp32": (2, 2.0), "bf16": (16, 1.5), "fp16": (8, 1.0)}  # image: (max, mean) |Δ| in 8-bit levels

    def __init__(self, device: str, dtype: str):
        self.device, self.dtype_name = torch.device(device), dtype
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        self.rel, self.pixels = self.REL[dtype], self.PIXELS[dtype]

    def __repr__(self) -> str:
        return f"{self.device.type}-{self.dtype_name}"


def pytest_generate_tests(metafunc):
    """Tests that take `parity_target` run once per `--dtype` in the list, on `--device`."""
    if "parity_target" in metafunc.fixturenames:
        device, dtypes = metafunc.config.getoption("--device"), metafunc.config.getoption("--dtype").split(",")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise pytest.UsageError("--device cuda on a machine without CUDA")
        unknown = [d for d in dtypes if d not in Target.REL]
        if unknown:
            raise pytest.UsageError(f"--dtype {unknown[0]}: not one of fp32, fp16, bf16")
        metafunc.parametrize("parity_target", [Target(device, d) for d in dtypes], ids=repr, scope="session")


def tiny_unet_config(kind: str = "sd1", in_channels: int = 4):
    from latentdiff.models.unet import UNetConfig

    if kind == "sd2":  # linear projections, per-level heads, wider context
        return UNetConfig(in_channels=in_channels, block_out_channels=(32, 64), layers_per_block=1, attention_levels=(True, True),
                          num_heads=(2, 4), cross_attention_dim=48, use_linear_projection=True, norm_num_groups=8, sample_size=8)
    return UNetConfig(in_channels=in_channels, block_out_channels=(32, 64), layers_per_block=1, attention_levels=(False, True),
                      num_heads=2, cross_attention_dim=32, norm_num_groups=8, sample_size=8)


def tiny_components(kind: str = "sd1", seed: int = 0, in_channels: int = 4, prediction_type: str = "epsilon"):
    """Random U-Net + 8×-downsampling VAE + 2-layer CLIP text encoder + the shipped CLIP tokenizer."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from latentdiff.checkpoints import Components
    from latentdiff.checkpoints.loader import load_tokenizer
    from latentdiff.models.unet import UNet

    torch.manual_seed(seed)
    cfg = tiny_unet_config(kind, in_channels)
    unet = UNet(cfg).eval()
    with torch.no_grad():  # default init leaves conv_out ≈ 0 in no model of ours, but be sure outputs are lively
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 32, 32),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=8, sample_size=64).eval()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=cfg.cross_attention_dim, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                        hidden_act="gelu" if kind == "sd2" else "quick_gelu",
                                        bos_token_id=49406, eos_token_id=49407, pad_token_id=1)).eval()
    scheduler = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                 "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
                 "clip_sample": False, "prediction_type": prediction_type}
    return Components(unet, vae, text, load_tokenizer(None, kind), scheduler, kind=kind, source="tiny")


@pytest.fixture(scope="session")
def tiny_sd1():
    return tiny_components("sd1")


@pytest.fixture(scope="session")
def tiny_sd2():
    return tiny_components("sd2", seed=1, prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tiny_sd1):
    """The tiny SD1-layout model saved as a diffusers folder."""
    from latentdiff.checkpoints import save_diffusers_folder

    return save_diffusers_folder(tiny_sd1, tmp_path_factory.mktemp("models") / "tiny-sd1")


@pytest.fixture(scope="session")
def tiny_folder_sd2(tmp_path_factory, tiny_sd2):
    from latentdiff.checkpoints import save_diffusers_folder

    return save_diffusers_folder(tiny_sd2, tmp_path_factory.mktemp("models") / "tiny-sd2")


@pytest.fixture(scope="session")
def tiny_single_file(tmp_path_factory, tiny_sd1):
    """The same tiny SD1-layout model as one LDM-layout .safetensors file."""
    from latentdiff.checkpoints import save_single_file

    return save_single_file(tiny_sd1, tmp_path_factory.mktemp("models") / "tiny-sd1.safetensors")


def fingerprint(components) -> tuple:
    """What a test could change on shared components: every tensor (values, dtype, device), the modules' own attributes,
    train/eval mode, hooks, and the settings."""
    import hashlib

    h = hashlib.sha256()
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(components, name)
        if module is None:  # SD1/SD2 have no second encoder, the SDXL refiner no first
            continue
        for key, tensor in module.state_dict().items():
            h.update(f"{key}:{tensor.dtype}:{tensor.device}".encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes())
        for m in module.modules():
            h.update(repr(sorted(k for k in vars(m) if not k.startswith("_"))).encode())
            # transformers 5 installs its own output-capturing hooks on the first output_hidden_states call: not ours
            hooks = (len(m._forward_hooks), len(m._forward_pre_hooks)) if not name.startswith("text_encoder") else ()
            h.update(repr((m.training, hooks)).encode())
    return h.hexdigest(), repr(components.scheduler_config), repr(components.generation), components.kind


def folder_fingerprint(path) -> tuple:
    """What a test could change in a shared model folder or file on disk: its files' names, sizes and contents' times."""
    from pathlib import Path

    path = Path(path)
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return tuple((str(f.relative_to(path.parent)), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


SESSION_COMPONENTS = ("tiny_sd1", "tiny_sd2", "tiny_sdxl", "tiny_sdxl_refiner", "tiny_sdxl_inpaint")
SESSION_FILES = ("tiny_folder", "tiny_folder_sd2", "tiny_single_file", "tiny_folder_biased", "tiny_sdxl_folder",
                 "tiny_sdxl_refiner_folder", "tiny_sdxl_inpaint_folder")


@pytest.fixture(autouse=True)
def _session_components_unchanged(request):
    """No test mutates a session fixture: the tiny components and model folders a test used are the same after it."""
    checks = [(n, fingerprint) for n in SESSION_COMPONENTS if n in request.fixturenames]
    checks += [(n, folder_fingerprint) for n in SESSION_FILES if n in request.fixturenames]
    before = {n: check(request.getfixturevalue(n)) for n, check in checks}
    yield
    for n, check in checks:
        assert check(request.getfixturevalue(n)) == before[n], f"{request.node.nodeid} changed the session fixture {n}"


from sdxl_fixtures import (tiny_sdxl, tiny_sdxl_folder, tiny_sdxl_inpaint, tiny_sdxl_inpaint_folder,  # noqa: E402,F401
                           tiny_sdxl_refiner, tiny_sdxl_refiner_folder)


def with_text_bias(components, bias: float = 0.5):
    """A copy of the components whose CLIP final layer norm has a bias: a fresh LayerNorm leaves every token's mean at
    0, which makes A1111's mean-restoring emphasis divide by ~0 (trained CLIPs have a bias); U-Net and VAE are shared."""
    import copy
    import dataclasses

    text = copy.deepcopy(components.text_encoder)
    with torch.no_grad():
        getattr(text, "text_model", text).final_layer_norm.bias.fill_(bias)
    return dataclasses.replace(components, text_encoder=text)


@pytest.fixture(scope="session")
def tiny_folder_biased(tmp_path_factory, tiny_sd1):
    """The tiny SD1 model with a lively text encoder (with_text_bias), as a diffusers folder: for weighted prompts."""
    from latentdiff.checkpoints import save_diffusers_folder

    return save_diffusers_folder(with_text_bias(tiny_sd1), tmp_path_factory.mktemp("models") / "tiny-sd1-biased")
