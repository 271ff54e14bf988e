"""Textual-inversion embeddings: A1111 and diffusers files read alike, used by name in prompts, and the same image as
diffusers' load_textual_inversion on the tiny random SD1 model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import save_file

from latentdiff.checkpoints.embeddings import read_embedding, read_embeddings, vectors_for
from latentdiff.cli import main
from latentdiff.errors import LatentDiffError
from latentdiff.hashes import sha256_file
from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline

D = 32  # the tiny SD1 text encoder's width
VECS = torch.randn(2, D, generator=torch.Generator().manual_seed(5))  # (n, D): a two-vector embedding


def write(path, kind: str, vecs=VECS):
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "a1111_st":
        save_file({"emb_params": vecs.contiguous()}, path)
    elif kind == "a1111_pt":
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vecs.clone()}, "name": "x", "step": 3000}, path)
    elif kind == "diffusers":
        save_file({"<x>": vecs.contiguous()}, path)
    elif kind == "sdxl":
        save_file({"clip_l": vecs.contiguous(), "clip_g": torch.ones(2, 48)}, path)
    return path


@pytest.mark.parametrize("kind,file,name", [("a1111_st", "badhands.safetensors", "badhands"),
                                            ("a1111_pt", "badhands.pt", "badhands"),
                                            ("diffusers", "badhands/learned_embeds.safetensors", "badhands")])
def test_every_format_reads_the_same_vectors(tmp_path, kind, file, name):
    emb = read_embedding(write(tmp_path / file, kind), allow_pickle=True)
    assert emb.name == name and emb.count == 2
    assert torch.equal(emb.for_encoder(D), VECS) and emb.for_encoder(48) is None
    assert emb.hash == sha256_file(tmp_path / file)[:12]


def test_sdxl_pair_gives_each_encoder_its_half(tmp_path):
    emb = read_embedding(write(tmp_path / "pair.safetensors", "sdxl"))
    assert torch.equal(emb.for_encoder(D, "clip_l"), VECS) and torch.equal(emb.for_encoder(48, "clip_g"), torch.ones(2, 48))
    assert emb.for_encoder(D) is None  # an SDXL pair fits no SD1/SD2 encoder (A1111 skips it too)
    assert list(vectors_for({"pair": emb}, 48, "clip_g")) == ["pair"]


def test_pickles_need_allow_pickle_and_bad_files_are_one_line(tmp_path):
    pt = write(tmp_path / "e" / "neg.pt", "a1111_pt")
    with pytest.raises(LatentDiffError, match="is a pickle; pass --allow-pickle"):
        read_embedding(pt)
    write(tmp_path / "e" / "sub" / "good.safetensors", "a1111_st")
    assert list(read_embeddings(tmp_path / "e")) == ["good"]  # the pickle is skipped without allow_pickle
    assert sorted(read_embeddings(tmp_path / "e", allow_pickle=True)) == ["good", "neg"]
    save_file({"a": torch.zeros(2), "b": torch.zeros(2)}, tmp_path / "two.safetensors")
    with pytest.raises(LatentDiffError, match="is not a textual-inversion embedding"):
        read_embedding(tmp_path / "two.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"nope")
    with pytest.raises(LatentDiffError, match="not a valid safetensors"):
        read_embedding(tmp_path / "junk.safetensors")
    with pytest.raises(LatentDiffError, match="embeddings folder does not exist"):
        read_embeddings(tmp_path / "nowhere")


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


@pytest.mark.parametrize("kind,file", [("a1111_st", "mytok.safetensors"), ("diffusers", "mytok/learned_embeds.safetensors")])
def test_same_image_as_diffusers_load_textual_inversion(tmp_path, tiny_folder, kind, file):
    path = write(tmp_path / file, kind)
    prompt, kw = "a photo of mytok on a table", dict(num_inference_steps=4, guidance_scale=6.0, height=64, width=64)
    ref = StableDiffusionPipeline.from_pretrained(str(tiny_folder), safety_checker=None, local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    ref.load_textual_inversion(str(path), token="mytok")
    want = ref(prompt, negative_prompt="mytok", generator=torch.Generator("cpu").manual_seed(3), **kw).images[0]
    pipe = LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")
    from latentdiff.pipelines.samplers import make_scheduler

    ref.scheduler = make_scheduler("pndm", pipe.components.scheduler_config)  # ours draws with pndm below; diffusers' own scheduler is PNDM
    assert pipe.load_embeddings(path) == ["mytok"]
    got = pipe(prompt, "mytok", sampler="pndm", seed=3, progress=False, **kw)
    diff = np.abs(pixels(want) - pixels(got.images[0]))
    assert diff.max() <= 2, diff.max()
    plain = LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")(prompt, "mytok", sampler="pndm", seed=3,
                                                                                 progress=False, **kw).images[0]
    assert np.abs(pixels(plain) - pixels(got.images[0])).mean() > 1  # the embedding changed the picture
    assert got.params[0].extra["TI hashes"] == f"mytok: {sha256_file(path)[:12]}"


def test_cli_embeddings_dir_and_png_record(capsys, tmp_path, tiny_folder_biased):
    tiny_folder = tiny_folder_biased
    write(tmp_path / "emb" / "ugly.safetensors", "a1111_st")
    out = tmp_path / "a.png"
    code = main(["generate", "a (cat:1.2), [dog]", "--negative", "(ugly:1.3)", "--embeddings-dir", str(tmp_path / "emb"),
                 "--model", str(tiny_folder), "--steps", "2", "--seed", "1", "--dtype", "fp32", "--out", str(out)])
    assert code == 0
    assert np.asarray(Image.open(out)).std() > 5  # a real picture (weights on a lively encoder: no NaN)
    text = Image.open(out).info["parameters"]
    assert text.startswith("a (cat:1.2), [dog]\nNegative prompt: (ugly:1.3)\n")  # the prompt as typed
    assert "TI hashes: \"ugly: " in text
    assert main(["generate", "x", "--embeddings-dir", str(tmp_path / "none"), "--model", str(tiny_folder)]) == 2
    assert "embeddings folder does not exist" in capsys.readouterr().err
