"""Cold-start fast paths give exactly what the libraries' loaders give; `--threads` sets torch's threads."""

import json
import shutil

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

from latentdiff.checkpoints import load_components
from latentdiff.checkpoints.direct import DEFAULT_TOKENIZER, direct_text_encoder, direct_vae
from latentdiff.checkpoints.loader import ASSETS, bundled_tokenizer_dir
from latentdiff.cli import main
from latentdiff.errors import LatentDiffError
from latentdiff.runtime import configure_threads

DEFAULT = ASSETS / "default"


def same_module(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert type(a) is type(b) and a.training == b.training == False  # noqa: E712
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].device == sb[k].device and torch.equal(sa[k], sb[k]), k
    for (na, ba), (nb, bb) in zip(a.named_buffers(), b.named_buffers()):  # non-persistent ones too (position_ids)
        assert na == nb and torch.equal(ba, bb)


@pytest.mark.parametrize("where", ["embedded", "tiny"])
def test_direct_loaders_equal_from_pretrained(where, tiny_folder):
    folder = DEFAULT if where == "embedded" else tiny_folder
    vae, ref_vae = direct_vae(folder / "vae"), AutoencoderKL.from_pretrained(str(folder / "vae"))
    same_module(vae, ref_vae)
    assert vae.dtype == torch.float32  # diffusers upcasts the embedded model's fp16 file
    assert {k: v for k, v in vae.config.items() if k != "_use_default_values"} == \
           {k: v for k, v in ref_vae.config.items() if k != "_use_default_values"}
    text, ref_text = direct_text_encoder(folder / "text_encoder"), CLIPTextModel.from_pretrained(str(folder / "text_encoder"))
    same_module(text, ref_text)
    assert text.config.to_dict() == ref_text.config.to_dict()
    ids = torch.tensor([[49406, 320, 2368, 49407] + [49407] * 73])
    with torch.no_grad():
        assert torch.equal(text(ids).last_hidden_state, ref_text(ids).last_hidden_state)


def test_direct_loaders_leave_other_folders_to_the_libraries(tiny_folder, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_folder, folder)
    state = load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    state["extra.weight"] = torch.zeros(1)  # a key the class does not have
    save_file(state, str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    assert direct_vae(folder / "vae") is None
    shutil.copy(folder / "text_encoder" / "model.safetensors", folder / "text_encoder" / "model.fp16.safetensors")
    assert direct_text_encoder(folder / "text_encoder") is None  # two weights files: from_pretrained picks
    assert direct_vae(tmp_path / "nowhere") is None


def test_embedded_tokenizer_json_holds_the_bundled_vocab_and_merges():
    """The embedded model reads the bundled vocab.json + merges.txt instead of its tokenizer.json: same tables, same ids."""
    model = json.loads((DEFAULT_TOKENIZER / "tokenizer.json").read_text())["model"]
    bundled = bundled_tokenizer_dir("sd1")
    assert model["vocab"] == json.loads((bundled / "vocab.json").read_text())
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    lines = (bundled / "merges.txt").read_text().splitlines()
    assert merges == [line for line in lines if line and not line.startswith("#version")]
    a, b = CLIPTokenizer.from_pretrained(str(DEFAULT_TOKENIZER)), load_components(DEFAULT).tokenizer
    assert b.name_or_path == str(bundled)
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token", "model_max_length"):
        assert getattr(a, attr) == getattr(b, attr), attr
    prompts = ["a cat in a spacesuit", "Ünïcödé 🐱 emoji, (weights:1.2) BREAK x", "", "don't   STOP!! 3.14 <|endoftext|>",
               "a " * 100]
    for p in prompts:
        assert a(p, padding="max_length", truncation=True, max_length=77).input_ids == \
               b(p, padding="max_length", truncation=True, max_length=77).input_ids


def test_threads_flag_sets_torch_threads_and_refuses_nonsense(capsys, tmp_path):
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) is None and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(LatentDiffError, match="--threads must be a positive whole number, got 0"):
        configure_threads(0)
    out = tmp_path / "x.png"
    assert main(["generate", "a cat", "--threads", "0", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: --threads must be a positive whole number, got 0"
    assert not out.exists()


def test_oversubscription_hint(monkeypatch):
    monkeypatch.setattr("os.getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert configure_threads(None) == "note: the CPU is busy (load 9.0 on 2 cores); --threads 1 may be faster than torch's 2"
        monkeypatch.setattr("os.getloadavg", lambda: (0.5, 0.5, 0.5))
        assert configure_threads(None) is None
    finally:
        torch.set_num_threads(before)
