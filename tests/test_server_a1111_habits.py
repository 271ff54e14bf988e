"""The server takes A1111's habits through the pipeline: weighted prompts, embeddings by name (listed at
/sdapi/v1/embeddings) and enable_hr, with the library's pixels (0/255)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import webuiapi
from safetensors.torch import save_file

from latentdiff.pipelines.hires import HiresFix, hires_fix
from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline
from latentdiff.server.worker import Catalog

from server_helpers import start_server


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_folder_biased):
    emb = tmp_path_factory.mktemp("emb")
    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(1))}, emb / "grainy.safetensors")
    save_file({"clip_l": torch.zeros(1, 32), "clip_g": torch.zeros(1, 48)}, emb / "xlonly.safetensors")
    srv = start_server(Catalog(str(tiny_folder_biased), embeddings_dir=str(emb)), dtype="fp32")
    yield srv, emb, tiny_folder_biased
    srv.stop()


def test_weighted_prompt_with_embedding_and_hires_equal_the_library(setup):
    srv, emb, folder = setup
    api = webuiapi.WebUIApi(host="127.0.0.1", port=srv.port)
    assert api.get_embeddings() == {
        "loaded": {"grainy": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 32, "vectors": 2}},
        "skipped": {"xlonly": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 32, "vectors": 1}}}  # its clip_l
    prompt, negative = "a (red:1.3) fox, [snow] BREAK grainy", "(blurry:1.2)"
    kw = dict(width=64, height=64, steps=3, cfg_scale=4.0, sampler_name="Euler", seed=9)
    r = api.txt2img(prompt=prompt, negative_prompt=negative, **kw)
    local = LatentDiffusionPipeline.from_pretrained(folder, dtype="fp32")
    local.load_embeddings(emb / "grainy.safetensors")
    lk = dict(num_inference_steps=3, guidance_scale=4.0, sampler="euler", seed=9, width=64, height=64, progress=False)
    want = local(prompt, negative, **lk).images[0]
    assert np.abs(np.asarray(r.image, dtype=int) - np.asarray(want, dtype=int)).max() == 0
    assert r.info["infotexts"][0].startswith(f"{prompt}\nNegative prompt: {negative}\n") and "TI hashes" in r.info["infotexts"][0]
    h = api.txt2img(prompt=prompt, negative_prompt=negative, enable_hr=True, hr_scale=1.5, hr_upscaler="Latent (nearest)",
                    hr_second_pass_steps=2, denoising_strength=0.6, **kw)
    want = hires_fix(local, prompt, negative, hires=HiresFix(1.5, 2, 0.6, "latent_nearest"), **lk).images[0]
    assert h.image.size == (96, 96)
    assert np.abs(np.asarray(h.image, dtype=int) - np.asarray(want, dtype=int)).max() == 0
    assert "Hires upscaler: Latent (nearest)" in h.info["infotexts"][0]
