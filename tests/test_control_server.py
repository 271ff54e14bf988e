"""The server honours sd-webui-controlnet's `alwayson_scripts.controlnet` units (as webuiapi sends them) with the
library's pixels, lists its ControlNets, and refuses what it cannot do in one line."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image

from latentdiff.checkpoints.controlnet import save_controlnet_folder
from latentdiff.pipelines.control import ControlUnit
from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline
from latentdiff.server.worker import Catalog
from server_helpers import start_server
from test_controlnet_model import random_controlnet

SMALL = dict(width=64, height=64, steps=3, cfg_scale=4.0, sampler_name="Euler")


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_folder):
    cn_dir = tmp_path_factory.mktemp("controlnets")
    net = save_controlnet_folder(random_controlnet("sd1", seed=31), cn_dir / "cn-tiny")
    srv = start_server(Catalog(str(tiny_folder), controlnet_dir=str(cn_dir)), dtype="fp32")
    yield srv, net
    srv.stop()


def edge_map() -> Image.Image:
    a = np.zeros((64, 64, 3), np.uint8)
    a[10:54, 20:44] = 255
    return Image.fromarray(a)


def test_txt2img_controlnet_unit_equals_the_library(served, tiny_folder):
    srv, net = served
    api = webuiapi.WebUIApi(host="127.0.0.1", port=srv.port)
    unit = webuiapi.ControlNetUnit(image=edge_map(), module="canny", model="cn-tiny [0123abcd]", weight=1.2,
                                   resize_mode="Resize and Fill", guidance_start=0.0, guidance_end=0.7, threshold_a=50,
                                   threshold_b=150)
    r = api.txt2img(prompt="a red apple", seed=5, controlnet_units=[unit], **SMALL)
    assert "alwayson_scripts" not in r.info.get("ignored", [])
    local = LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")
    want = local("a red apple", num_inference_steps=3, guidance_scale=4.0, sampler="euler", seed=5, width=64, height=64,
                 progress=False, controls=[ControlUnit(net, edge_map(), 1.2, 0.0, 0.7, "canny", "fill", False, 50, 150)])
    assert np.array_equal(np.asarray(r.image.convert("RGB")), np.asarray(want.images[0]))
    assert 'ControlNet 0: "Module: canny, Model: cn-tiny [' in r.image.info["parameters"]
    assert requests.get(f"{srv.url}/controlnet/model_list").json() == {"model_list": ["cn-tiny"]}
    # webuiapi keeps the units in its mutable default `alwayson_scripts`; the server lists ControlNet among its scripts,
    # so webuiapi's next call without units sends {"args": []} and draws without a ControlNet
    plain = api.txt2img(prompt="a red apple", seed=5, **SMALL)
    assert api.has_controlnet and "ControlNet 0" not in plain.image.info["parameters"]


def test_unknown_model_and_module_are_one_line(served):
    srv, _ = served
    api = webuiapi.WebUIApi(host="127.0.0.1", port=srv.port)
    for unit, message in ((webuiapi.ControlNetUnit(image=edge_map(), module="none", model="nope"), "unknown ControlNet 'nope'"),
                          (webuiapi.ControlNetUnit(image=edge_map(), module="openpose", model="cn-tiny"), "module 'openpose'")):
        payload = {"prompt": "x", "seed": 1, **SMALL, "alwayson_scripts": {"ControlNet": {"args": [unit.to_dict()]}}}
        r = requests.post(f"{srv.url}/sdapi/v1/txt2img", json=payload)
        assert r.status_code in (400, 422) and message in r.text, r.text
