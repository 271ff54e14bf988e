"""`latentdiff serve` driven by A1111's own Python client (webuiapi, unchanged): pixels, sizes, parameters, errors."""

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image

from latentdiff.cli import main
from latentdiff.lora.attach import random_state
from latentdiff.lora.io import save_lora
from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline
from latentdiff.server.a1111 import Limits, parse_parameters, split_loras
from latentdiff.server.worker import Catalog

from server_helpers import start_server

SMALL = dict(width=64, height=64, steps=3, cfg_scale=4.0, sampler_name="Euler")


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_folder, tiny_folder_sd2):
    """A models folder (two tiny models, one pickle that must not be offered) and a LoRA folder with one LoRA."""
    root = tmp_path_factory.mktemp("serve")
    models, loras = root / "models", root / "loras"
    models.mkdir()
    loras.mkdir()
    (models / "tiny-sd1").symlink_to(tiny_folder)
    (models / "tiny-sd2").symlink_to(tiny_folder_sd2)
    (models / "evil.ckpt").write_bytes(b"not loaded")
    pipe = LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")
    state = random_state(pipe.unet, pipe.text_encoder, unet_targets=("attention", "proj"), rank=4, alpha=4.0,
                         text_targets=(), seed=3, std=0.3)
    save_lora(state, loras / "ink.safetensors", format="kohya")
    return models, loras


@pytest.fixture(scope="module")
def server(folders):
    models, loras = folders
    srv = start_server(Catalog(str(models / "tiny-sd1"), str(models), str(loras)), limits=Limits(max_body=2 * 2**20),
                       dtype="fp32")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api(server):
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port)


@pytest.fixture(scope="module")
def local(tiny_folder):
    """The same model run in-process, to compare pixels with."""
    return LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")


def pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_txt2img_equals_the_library_and_carries_parameters(api, local):
    r = api.txt2img(prompt="a red apple", negative_prompt="blur", seed=5, batch_size=2, n_iter=2, **SMALL)
    assert len(r.images) == 4 and all(im.size == (64, 64) for im in r.images)
    assert r.info["all_seeds"] == [5, 6, 7, 8] and r.info["sampler_name"] == "Euler" and r.info["steps"] == 3
    ref = local("a red apple", "blur", num_inference_steps=3, guidance_scale=4.0, sampler="euler", seed=7, width=64,
                height=64, num_images=2, progress=False)
    for got, want in zip(r.images[2:], ref.images):  # second batch: seeds 7, 8
        assert np.abs(pixels(got) - pixels(want)).max() == 0
    text = r.images[0].info["parameters"]
    assert text.startswith("a red apple\nNegative prompt: blur\nSteps: 3, Sampler: Euler, CFG scale: 4, Seed: 5, Size: 64x64")
    assert r.info["infotexts"][3].split("Seed: ")[1].startswith("8,")
    assert r.parameters["prompt"] == "a red apple" and r.parameters["seed"] == 5


def test_seed_minus_one_is_drawn_and_reported(api):
    a = api.txt2img(prompt="cat", seed=-1, **SMALL)
    seed = a.info["seed"]
    assert 0 <= seed < 2**32 and a.info["all_seeds"] == [seed]
    b = api.txt2img(prompt="cat", seed=seed, **SMALL)
    assert np.array_equal(pixels(a.image), pixels(b.image))


def test_karras_scheduler_and_ignored_fields(api):
    r = api.txt2img(prompt="cat", seed=1, width=64, height=64, steps=2, sampler_name="DPM++ 2M", scheduler="Karras",
                    restore_faces=True, enable_hr=True)
    assert r.info["sampler_name"] == "DPM++ 2M Karras"
    assert "restore_faces" in r.info["ignored"] and "enable_hr" not in r.info["ignored"]  # the hires fix runs (issue 17)
    assert r.image.size == (128, 128)


def test_img2img_and_inpaint(api, local):
    init = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3)))
    r = api.img2img(images=[init], prompt="sky", seed=3, denoising_strength=0.5, width=64, height=64, steps=4,
                    cfg_scale=4.0, sampler_name="Euler")
    ref = local.img2img("sky", init, strength=0.5, num_inference_steps=4, guidance_scale=4.0, sampler="euler", seed=3,
                        progress=False)
    assert np.array_equal(pixels(r.image), pixels(ref.images[0]))
    assert "Denoising strength: 0.5" in r.image.info["parameters"]

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half
    r = api.img2img(images=[init], mask_image=mask, prompt="sky", seed=3, denoising_strength=1.0, mask_blur=0,
                    width=64, height=64, steps=3, cfg_scale=4.0, sampler_name="Euler", inpainting_fill=1)
    got = pixels(r.image)
    assert np.array_equal(got[:, 32:], pixels(init)[:, 32:])      # kept exactly outside the mask
    assert np.abs(got[:, :32] - pixels(init)[:, :32]).mean() > 5  # repainted inside
    assert "inpainting_fill" in r.info["ignored"] and "Mask hash" in r.image.info["parameters"]


def test_options_switch_models_by_name_only(api, server, tiny_folder_sd2):
    names = api.util_get_model_names()
    assert names == ["tiny-sd1", "tiny-sd2"]  # the .ckpt pickle is not offered
    a = api.txt2img(prompt="cat", seed=2, **SMALL)
    api.util_set_model("tiny-sd2")
    assert api.get_options()["sd_model_checkpoint"] == "tiny-sd2"
    b = api.txt2img(prompt="cat", seed=2, **SMALL)
    ref = LatentDiffusionPipeline.from_pretrained(tiny_folder_sd2, dtype="fp32")("cat", num_inference_steps=3, guidance_scale=4.0,
                                                                                 sampler="euler", seed=2, width=64, height=64, progress=False)
    assert np.array_equal(pixels(b.image), pixels(ref.images[0])) and not np.array_equal(pixels(a.image), pixels(b.image))
    # per-request override, restored afterwards
    c = api.txt2img(prompt="cat", seed=2, override_settings={"sd_model_checkpoint": "tiny-sd1"}, **SMALL)
    assert np.array_equal(pixels(a.image), pixels(c.image)) and api.get_options()["sd_model_checkpoint"] == "tiny-sd2"
    api.set_options({"sd_model_checkpoint": "tiny-sd1"})
    for bad in ("../tiny-sd1", "/etc/passwd", "evil", "evil.ckpt"):
        resp = requests.post(f"{server.url}/sdapi/v1/options", json={"sd_model_checkpoint": bad})
        assert resp.status_code == 422 and "unknown model" in resp.json()["detail"]
    assert api.get_options()["sd_model_checkpoint"] == "tiny-sd1"


def test_png_info_reads_back_the_parameters(api):
    r = api.txt2img(prompt="a blue cube", negative_prompt="red", seed=11, **SMALL)
    info = api.png_info(r.image)
    assert info.info == r.image.info["parameters"]
    p = info.json["parameters"]
    assert (p["Prompt"], p["Negative prompt"], p["Seed"], p["Steps"], p["Size"]) == ("a blue cube", "red", "11", "3", "64x64")
    assert json.loads(info.json["items"]["latentdiff"])["seed"] == 11


def test_lora_tag_from_the_lora_folder(api, server):
    assert [x["name"] for x in api.get_loras()] == ["ink"]
    plain = api.txt2img(prompt="cat", seed=4, **SMALL)
    inked = api.txt2img(prompt="cat <lora:ink:1>", seed=4, **SMALL)
    assert np.abs(pixels(plain.image) - pixels(inked.image)).mean() > 1
    assert "<lora:ink:1>" in inked.image.info["parameters"]
    again = api.txt2img(prompt="cat", seed=4, **SMALL)  # the LoRA is off again without its tag
    assert np.array_equal(pixels(plain.image), pixels(again.image))
    resp = requests.post(f"{server.url}/sdapi/v1/txt2img", json={"prompt": "<lora:../../x:1>", "width": 64, "height": 64})
    assert resp.status_code == 422 and "unknown LoRA '../../x'" in resp.json()["detail"]


def test_progress_preview_and_interrupt(api, server):
    result = {}
    t = threading.Thread(target=lambda: result.update(r=api.txt2img(prompt="slow", seed=1, width=64, height=64, steps=150,
                                                                     sampler_name="Euler")))
    t.start()
    deadline, prog = time.time() + 60, None
    while time.time() < deadline:
        prog = api.get_progress()
        if prog["state"]["sampling_step"] >= 2 and prog["current_image"]:
            break
        time.sleep(0.05)
    assert prog["state"]["sampling_steps"] == 150 and 0 < prog["progress"] < 1 and prog["eta_relative"] > 0
    preview = Image.open(io.BytesIO(base64.b64decode(prog["current_image"])))
    assert preview.size == (64, 64) and np.asarray(preview).std() > 0
    api.interrupt()
    t.join(60)
    r = result["r"]
    assert r.info["interrupted"] is True and len(r.images) == 1 and r.images[0].size == (64, 64)
    assert api.get_progress()["state"]["sampling_step"] == 0  # idle again
    assert len(api.txt2img(prompt="after", seed=1, **SMALL).images) == 1


@pytest.mark.parametrize("payload, status, reason", [
    ({"width": 4096, "height": 64}, 422, "width 4096 is over the server's limit of 1024"),
    ({"width": 60, "height": 64}, 422, "width must be a positive multiple of 8"),
    ({"steps": 1000}, 422, "steps must be in 1..150"),
    ({"batch_size": 9}, 422, "batch_size must be in 1..8"),
    ({"batch_size": 4, "n_iter": 5}, 422, "batch_size × n_iter must be in 1..16"),
    ({"sampler_name": "nope"}, 422, "unknown sampler 'nope'"),
    ({"scheduler": "Exponential"}, 422, "unknown scheduler 'Exponential'"),
    ({"steps": "many"}, 422, "steps: Input should be a valid integer"),
    ({"prompt": "x" * 10_001}, 422, "over the limit of 10000 characters"),
    ({"override_settings": {"sd_model_checkpoint": "../../etc"}}, 422, "unknown model '../../etc'"),
])
def test_bad_requests_answer_4xx_naming_the_cause(server, payload, status, reason):
    resp = requests.post(f"{server.url}/sdapi/v1/txt2img", json={"prompt": "cat", "width": 64, "height": 64, **payload})
    assert resp.status_code == status and reason in resp.json()["detail"] and "\n" not in resp.json()["detail"]


def test_bad_img2img_inputs_and_body_limit(server):
    u = f"{server.url}/sdapi/v1/img2img"
    resp = requests.post(u, json={"prompt": "x", "init_images": ["bm90IGFuIGltYWdl"]})
    assert resp.status_code == 422 and resp.json()["detail"] == "init_images[0] is not a base64-encoded image"
    resp = requests.post(u, json={"prompt": "x"})
    assert resp.status_code == 422 and "img2img needs init_images" in resp.json()["detail"]
    buf = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buf, format="PNG")  # 9 Mpx in a small file
    resp = requests.post(u, json={"prompt": "x", "init_images": [base64.b64encode(buf.getvalue()).decode()]})
    assert resp.status_code == 422 and resp.json()["detail"] == "init_images[0] is 3000x3000, over the limit of 4194304 pixels"
    resp = requests.post(u, data=b"{" + b" " * (3 * 2**20) + b"}", headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and "over the limit of 2097152" in resp.json()["detail"]


def test_host_header_guard_and_no_cors(server):
    u = f"{server.url}/sdapi/v1/sd-models"
    assert requests.get(u).status_code == 200
    assert requests.get(u, headers={"Host": f"localhost:{server.port}"}).status_code == 200
    resp = requests.get(u, headers={"Host": "attacker.example:7860"})
    assert resp.status_code == 400 and "DNS rebinding" in resp.json()["detail"]
    resp = requests.options(f"{server.url}/sdapi/v1/txt2img", headers={"Origin": "http://evil.example",
                                                                      "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in {k.lower() for k in resp.headers}


def test_basic_auth(folders):
    models, _ = folders
    srv = start_server(Catalog(str(models / "tiny-sd1")), auth=("ann", "s3cret"), dtype="fp32")
    try:
        resp = requests.get(f"{srv.url}/sdapi/v1/sd-models")
        assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Basic")
        assert requests.get(f"{srv.url}/sdapi/v1/sd-models", auth=("ann", "wrong")).status_code == 401
        api = webuiapi.WebUIApi(host="127.0.0.1", port=srv.port, username="ann", password="s3cret")
        assert api.util_get_model_names() == ["tiny-sd1"]
        assert api.txt2img(prompt="cat", seed=1, **SMALL).image.size == (64, 64)
    finally:
        srv.stop()


def test_listings_and_refresh(api, folders, tiny_folder):
    assert {"Euler a", "DPM++ 2M", "DDIM"} <= {s["name"] for s in api.get_samplers()}
    assert [s["name"] for s in api.get_schedulers()] == ["automatic", "karras"]
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    models, _ = folders
    (models / "tiny-copy").symlink_to(tiny_folder)
    try:
        assert api.util_get_model_names() == ["tiny-sd1", "tiny-sd2"]  # not seen before a refresh
        api.refresh_checkpoints()
        assert api.util_get_model_names() == ["tiny-copy", "tiny-sd1", "tiny-sd2"]
    finally:
        (models / "tiny-copy").unlink()
        api.refresh_checkpoints()
    assert api.util_get_model_names() == ["tiny-sd1", "tiny-sd2"]


def test_page_and_static_files_are_served(server):
    page = requests.get(server.url + "/")
    assert page.status_code == 200 and "<title>latentdiff</title>" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN: nothing fetched from elsewhere
    for f in ("app.js", "style.css"):
        assert requests.get(f"{server.url}/static/{f}").status_code == 200


@pytest.mark.parametrize("argv, message", [
    (["serve", "--host", "0.0.0.0"], "give --api-auth USER:PASS"),
    (["serve", "--host", "0.0.0.0", "--api-auth", "nopass"], "--api-auth must be USER:PASS"),
    (["serve", "--models-dir", "/no/such/dir"], "--models-dir is not a folder"),
    (["serve", "--model", "/no/such/model.safetensors"], "no such model"),
    (["serve", "--port", "70000"], "--port must be in 1..65535"),
])
def test_serve_cli_refuses_unsafe_or_bad_flags(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_prompt_helpers():
    assert split_loras("a cat <lora:ink:0.5>, <lora:x> on a mat") == ("a cat , on a mat", {"ink": 0.5, "x": 1.0})
    p = parse_parameters('a\nb\nNegative prompt: c\nSteps: 3, Sampler: DPM++ 2M, Lora hashes: "a: 1, b: 2", Seed: 4')
    assert p == {"Prompt": "a\nb", "Negative prompt": "c", "Steps": "3", "Sampler": "DPM++ 2M",
                 "Lora hashes": '"a: 1, b: 2"', "Seed": "4"}
