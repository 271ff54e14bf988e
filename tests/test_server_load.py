"""Load test: 100 mixed requests, several at once, clients that hang up mid-generation, one interrupt."""

import base64
import io
import json
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from PIL import Image

from latentdiff.server.worker import Catalog

from server_helpers import start_server

BAD = [  # (payload changes, expected status, words of the reason)
    ({"width": 4000}, 422, "width 4000 is over the server's limit"),
    ({"steps": 0}, 422, "steps must be in 1..150"),
    ({"sampler_name": "Turbo"}, 422, "unknown sampler 'Turbo'"),
    ({"prompt": "<lora:nothere:1> cat"}, 422, "unknown LoRA 'nothere'"),
    ({"batch_size": "two"}, 422, "batch_size: Input should be a valid integer"),
    ({"override_settings": {"sd_model_checkpoint": "/etc/passwd"}}, 422, "unknown model '/etc/passwd'"),
]


def hang_up(port: int, delay: float) -> None:
    """A client that asks for a long generation and disconnects before the answer."""
    body = json.dumps({"prompt": "gone", "width": 64, "height": 64, "steps": 120, "seed": 1}).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % (port, len(body)) + body)
    time.sleep(delay)
    s.close()


def test_hundred_mixed_requests(tiny_folder, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    old_tempdir, tempfile.tempdir = tempfile.tempdir, str(tmp)  # any temp file the server made would land here
    srv = start_server(Catalog(str(tiny_folder)), dtype="fp32")
    url = f"{srv.url}/sdapi/v1/txt2img"
    try:
        def one(i: int):
            if i in (10, 40, 70):
                hang_up(srv.port, 0.3)
                return i, "hangup", None
            if i == 55:
                time.sleep(0.2)
                return i, "interrupt", requests.post(f"{srv.url}/sdapi/v1/interrupt", timeout=60)
            if i % 3 == 0:
                change, _, _ = BAD[(i // 3) % len(BAD)]
                return i, "bad", requests.post(url, json={"prompt": "cat", "width": 64, "height": 64, **change}, timeout=120)
            n = 2 if i % 7 == 0 else 1
            return i, "good", requests.post(url, json={"prompt": f"cat {i}", "seed": i, "width": 64, "height": 64,
                                                      "steps": 2, "batch_size": n}, timeout=300)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(one, range(100)))
        wall = time.perf_counter() - t0
        good = bad = 0
        for i, kind, resp in results:
            if kind == "good":
                assert resp.status_code == 200, (i, resp.text)
                body = resp.json()
                n = 2 if i % 7 == 0 else 1
                assert len(body["images"]) == n
                info = json.loads(body["info"])
                assert info["all_seeds"] == [i + k for k in range(n)] or info["interrupted"]
                for b64 in body["images"]:
                    im = Image.open(io.BytesIO(base64.b64decode(b64)))
                    assert im.size == (64, 64) and f"cat {i}" in im.info["parameters"]
                good += 1
            elif kind == "bad":
                _, status, reason = BAD[(i // 3) % len(BAD)]
                assert resp.status_code == status and reason in resp.json()["detail"], (i, resp.text)
                bad += 1
            elif kind == "interrupt":
                assert resp.status_code == 200
        assert (good, bad) == (62, 34)
        print(f"100 requests in {wall:.1f} s")
        deadline = time.time() + 60  # the hung-up jobs are dropped or stopped, the queue drains
        while srv.worker.pending and time.time() < deadline:
            time.sleep(0.1)
        assert srv.worker.pending == 0 and srv.worker.cancelled == 3  # each hang-up noticed and its job dropped
        assert requests.get(f"{srv.url}/sdapi/v1/sd-models").json()[0]["model_name"] == tiny_folder.name
        after = requests.post(url, json={"prompt": "after", "width": 64, "height": 64, "steps": 2, "seed": 1})
        assert after.status_code == 200 and len(after.json()["images"]) == 1
        assert list(tmp.iterdir()) == []
    finally:
        srv.stop()
        tempfile.tempdir = old_tempdir
