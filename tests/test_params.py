"""PNG parameters as A1111 writes and reads them: sampler + schedule fields, quoting, model and LoRA hashes."""

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from latentdiff.checkpoints import file_hash
from latentdiff.hashes import lora_hash, model_hash
from latentdiff.pipelines.png_metadata import GenerationParams, parse_a1111
from latentdiff.pipelines.samplers import SAMPLERS, a1111_fields, sampler_from_a1111

# our sampler → the fields we write → what A1111 ≥ 1.9 reads them as: (sampler, schedule it draws with)
A1111_TABLE = {
    "ddim": ({"Sampler": "DDIM"}, ("DDIM", "DDIM timesteps")),
    "ddpm": ({"Sampler": "DDIM", "Eta DDIM": "1"}, ("DDIM", "DDIM timesteps")),
    "pndm": ({"Sampler": "PLMS"}, ("PLMS", "DDIM timesteps")),
    "euler": ({"Sampler": "Euler"}, ("Euler", "model's uniform")),
    "euler_a": ({"Sampler": "Euler a"}, ("Euler a", "model's uniform")),
    "heun": ({"Sampler": "Heun"}, ("Heun", "model's uniform")),
    "lms": ({"Sampler": "LMS"}, ("LMS", "model's uniform")),
    "dpmpp_2m": ({"Sampler": "DPM++ 2M", "Schedule type": "Uniform"}, ("DPM++ 2M", "Uniform")),
    "dpmpp_2m_karras": ({"Sampler": "DPM++ 2M", "Schedule type": "Karras"}, ("DPM++ 2M", "Karras")),
    "unipc": ({"Sampler": "UniPC"}, ("UniPC", "DDIM timesteps")),
    "lcm": ({"Sampler": "LCM"}, ("LCM", "its own sigmas; ours are LCMScheduler's skipping timesteps")),
}


def test_every_sampler_has_a_row():
    assert set(A1111_TABLE) == set(SAMPLERS)


def test_schedule_given_as_an_a1111_label_writes_its_field():
    assert a1111_fields("euler", "Karras") == a1111_fields("euler", "karras") == {"Sampler": "Euler", "Schedule type": "Karras"}


@pytest.mark.parametrize("name", sorted(A1111_TABLE))
def test_sampler_fields_round_trip_through_the_infotext(name):
    fields, _ = A1111_TABLE[name]
    assert a1111_fields(name) == fields
    text = GenerationParams(prompt="a cat", sampler=name, steps=3, seed=1, width=64, height=64).to_a1111()
    _, _, kv = parse_a1111(text)
    assert {k: kv[k] for k in fields} == fields
    assert ("Schedule type" in kv) == ("Schedule type" in fields)
    assert sampler_from_a1111(kv) == (name, [])


# infotexts as A1111 < 1.9, A1111 ≥ 1.9 and older latentdiff wrote them → our sampler, notices
READ_TABLE = [
    ({"Sampler": "DPM++ 2M Karras"}, "dpmpp_2m_karras", 0),                                 # A1111 < 1.9, latentdiff < 13
    ({"Sampler": "DPM++ 2M"}, "dpmpp_2m", 0),                                               # A1111 < 1.9: uniform sigmas
    ({"Sampler": "DPM++ 2M", "Schedule type": "Karras"}, "dpmpp_2m_karras", 0),             # A1111 ≥ 1.9
    ({"Sampler": "DPM++ 2M", "Schedule type": "Automatic"}, "dpmpp_2m_karras", 0),          # 1.9's default for DPM++ 2M
    ({"Sampler": "DPM++ 2M Karras", "Schedule type": "Uniform"}, "dpmpp_2m_karras", 0),     # a suffix wins, as in A1111
    ({"Sampler": "Euler a", "Schedule type": "Automatic"}, "euler_a", 0),
    ({"Sampler": "k_euler_a"}, "euler_a", 0),
    ({"Sampler": "DDPM"}, "ddpm", 0),                                                       # what latentdiff wrote before
    ({"Sampler": "DDIM", "Eta DDIM": "1"}, "ddpm", 0),
    ({"Sampler": "DDIM", "Eta DDIM": "0.5"}, "ddim", 1),
    ({"Sampler": "Euler", "Schedule type": "Karras"}, "euler", 0),       # the schedule is read by schedule_from_a1111
    ({"Sampler": "DPM++ 2M", "Schedule type": "Exponential"}, "dpmpp_2m", 0),   # (test_schedules); no notice since issue 17
    ({"Sampler": "Euler a", "Schedule type": "Karras"}, "euler_a", 1),           # diffusers' Euler a has no Karras sigmas
    ({"Sampler": "DPM++ SDE", "Schedule type": "Karras"}, None, 1),
    ({"Sampler": "Restart"}, None, 1),
]


@pytest.mark.parametrize("fields,name,notices", READ_TABLE)
def test_old_and_new_spellings_are_read(fields, name, notices):
    got, notes = sampler_from_a1111(fields)
    assert got == name and len(notes) == notices


def test_parse_a1111_reads_a1111s_documented_format():
    text = ('girl with an artist\'s beret, determined,\nblue eyes, desert scene\n'
            'Negative prompt: ugly, fat,\n(((deformed))), [blurry]\n'
            'Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x768, Model hash: 45dee52b, '
            'Lora hashes: "ink: 0123456789ab, pen: ba9876543210", Wildcard prompt: "a, \\"quoted\\": b", Version: v1.10.1')
    prompt, negative, kv = parse_a1111(text)
    assert prompt == "girl with an artist's beret, determined,\nblue eyes, desert scene"
    assert negative == "ugly, fat,\n(((deformed))), [blurry]"
    assert kv == {"Steps": "20", "Sampler": "Euler a", "CFG scale": "7", "Seed": "965400086", "Size": "512x768",
                  "Model hash": "45dee52b", "Lora hashes": "ink: 0123456789ab, pen: ba9876543210",
                  "Wildcard prompt": 'a, "quoted": b', "Version": "v1.10.1"}
    assert parse_a1111("just a prompt, with: a colon") == ("just a prompt, with: a colon", "", {})


def test_values_with_commas_are_quoted_as_a1111_does():
    p = GenerationParams(prompt="x", model="/m/odd, name: v2.safetensors", extra={"Note": "a,b"})
    line = p.to_a1111().splitlines()[-1]
    assert 'Model: "odd, name: v2"' in line and 'Note: "a,b"' in line
    assert parse_a1111(p.to_a1111())[2]["Model"] == "odd, name: v2"


def _lora_file(path, seed=0, metadata=None):
    g = torch.Generator().manual_seed(seed)
    tensors = {"lora_unet_x.lora_down.weight": torch.randn(4, 8, generator=g),
               "lora_unet_x.lora_up.weight": torch.randn(8, 4, generator=g), "lora_unet_x.alpha": torch.tensor(4.0)}
    save_file(tensors, str(path), metadata=metadata or {"ss_network_dim": "4"})
    return path


def test_lora_hash_is_sha256_after_the_safetensors_header(tmp_path):
    path = _lora_file(tmp_path / "ink.safetensors")
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    expected = hashlib.sha256(raw[8 + n:]).hexdigest()[:12]
    assert lora_hash(path) == expected and expected != hashlib.sha256(raw).hexdigest()[:12]
    # metadata edits leave the tensors' hash alone
    other = _lora_file(tmp_path / "b.safetensors", metadata={"ss_network_dim": "4", "ss_output_name": "renamed"})
    assert lora_hash(other) == expected
    # kohya's precomputed sshs_model_hash wins, as in A1111's network.py
    kohya = _lora_file(tmp_path / "k.safetensors", metadata={"sshs_model_hash": "ABCDEF0123456789" * 4})
    assert lora_hash(kohya) == "abcdef012345"

    p = GenerationParams(prompt="a cat", loras=[[str(path), 0.6], [str(other), 1.0]])
    text = p.to_a1111()
    assert text.splitlines()[0] == "a cat <lora:ink:0.6> <lora:b:1>"
    assert f'Lora hashes: "ink: {expected}, b: {expected}"' in text
    chunk = p.to_json()
    assert json.loads(chunk)["lora_hashes"] == {str(path): expected, str(other): expected}
    path.unlink()  # the hash recorded in the JSON chunk outlives the file
    assert GenerationParams.from_json(chunk).lora_hash_map()[str(path)] == expected
    assert p.lora_hash_map() == {str(other): expected}


def test_model_hash_of_file_and_folder(tmp_path, tiny_folder, tiny_single_file):
    assert file_hash(tiny_single_file) == hashlib.sha256(tiny_single_file.read_bytes()).hexdigest()[:10]
    folder = shutil.copytree(tiny_folder, tmp_path / "copy")
    lines = "".join(f"{f.relative_to(folder).as_posix()}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\n"
                    for f in sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix()))
    h = hashlib.sha256(lines.encode()).hexdigest()[:10]
    assert model_hash(folder) == h == model_hash(tiny_folder) == file_hash(folder)
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x").write_text("ignored")
    assert model_hash(folder) == h
    cfg = folder / "scheduler" / "scheduler_config.json"
    cfg.write_text(cfg.read_text().replace("scaled_linear", "linear"))
    assert model_hash(folder) != h


def test_our_text_names_the_cpu_noise_and_reads_back_without_notices(tiny_folder):
    from latentdiff.pipelines.replay import from_a1111

    p = GenerationParams(prompt="a (red) cat", negative_prompt="dog", sampler="dpmpp_2m_karras", steps=7, seed=3, width=64,
                         height=48, guidance_scale=4.5, clip_skip=1, model=str(tiny_folder), model_hash=model_hash(tiny_folder))
    assert "RNG: CPU" in p.to_a1111()
    src = from_a1111(p.to_a1111())
    assert src.notices == []  # A1111's emphasis is read as A1111 reads it (models.prompt_syntax)
    q = src.params
    assert (q.prompt, q.negative_prompt, q.sampler, q.steps, q.seed, q.width, q.height, q.guidance_scale, q.clip_skip,
            q.model_hash, src.model_name) == ("a (red) cat", "dog", "dpmpp_2m_karras", 7, 3, 64, 48, 4.5, 1,
                                              model_hash(tiny_folder), "tiny-sd1")


def test_big_file_hashes_are_remembered_on_disk(tmp_path, monkeypatch):
    """A checkpoint is hashed once: the next process reads the hash from ~/.cache/latentdiff/hashes.json, and a changed
    file (size or mtime) is hashed again."""
    import hashlib

    from latentdiff import hashes

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(hashes, "DISK_CACHE_MIN_BYTES", 1)
    monkeypatch.setattr(hashes, "_CACHE", {})
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights" * 1000)
    want = hashlib.sha256(model.read_bytes()).hexdigest()
    assert hashes.sha256_file(model) == want
    assert want in (tmp_path / "cache" / "latentdiff" / "hashes.json").read_text()

    monkeypatch.setattr(hashes, "_CACHE", {})  # a new process
    monkeypatch.setattr(hashes, "_sha256", lambda path, offset=0: "not hashed again")
    assert hashes.sha256_file(model) == want
    model.write_bytes(b"other weights")
    assert hashes.sha256_file(model) == "not hashed again"
