"""`graphrt serve` on the loopback address only, as one local replica (uvicorn) and as Ray Serve
replicas on a local Ray cluster (2 CPUs, fake GPUs): concurrent requests get the boxes of
Engine.locate, bad ones a 4xx with a reason, and the server stays up. Tiny random checkpoint:
tokens are compared between paths, never read."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("ray", reason="needs the Ray extra: pip install 'graphrt[ray]'")
pytest.importorskip("fastapi", reason="needs the Ray extra: pip install 'graphrt[ray]'")

from graphrt.engine import EngineOptions  # noqa: E402
from graphrt.decode import GenerationConfig  # noqa: E402

from conftest import random_image  # noqa: E402

HOST = "127.0.0.1"  # loopback only: the tests never listen on or call any other address
TOKENS = 12
TIMEOUT_S = 120  # per request; the tests send a bounded number of them


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _config(ckpt, root):
    from graphrt.scaleout.service import ServiceConfig

    options = EngineOptions(device="cpu", dtype="float32", generation=GenerationConfig(max_new_tokens=TOKENS))
    return ServiceConfig(str(ckpt), options, image_root=str(root), batch_wait_ms=200)


def _local(cfg):
    import uvicorn

    from graphrt.scaleout.service import LocateService, build_app

    sock = socket.socket()
    sock.bind((HOST, 0))
    server = uvicorn.Server(uvicorn.Config(build_app(LocateService(cfg)), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://{HOST}:{sock.getsockname()[1]}"
    _wait_healthy(url)
    yield url
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


def _ray(cfg):
    import ray

    from graphrt.scaleout import serve

    ray.init(num_cpus=2, num_gpus=2, object_store_memory=150 * 2**20, include_dashboard=False,
             log_to_driver=False, logging_level="WARNING")
    port = _free_port()
    serve.deploy(cfg, serve.ServeOptions(host=HOST, port=port, replicas=2, gpus_per_engine=1), blocking=False)
    url = f"http://{HOST}:{port}"
    _wait_healthy(url)
    yield url
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module", params=["local", "ray"])
def server(request, tiny_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    random_image(90, 70, seed=1).save(root / "a.png")
    random_image(50, 110, seed=2).save(root / "b.png")
    (root / "broken.png").write_bytes(b"not an image")
    start = _local if request.param == "local" else _ray
    for url in start(_config(tiny_ckpt, root)):
        yield url, root, request.param


def _wait_healthy(url: str, within_s: float = 180) -> None:
    deadline = time.time() + within_s
    while time.time() < deadline:
        try:
            if _get(url + "/health") == (200, {"status": "ok"}):
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"server at {url} not healthy within {within_s} s")


def _get(url: str):
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
        return r.status, json.loads(r.read())


def _post(url: str, body: dict):
    req = urllib.request.Request(url + "/v1/locate", json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_concurrent_requests_get_the_boxes_of_locate(server, tiny_engine):
    url, root, mode = server
    asks = [("a.png", "image", "cat"), ("b.png", "image_path", ["person", "car"]), ("a.png", "image_path", "dog"),
            ("b.png", "image", "tree"), ("a.png", "image_path", "cat"), ("a.png", "image", "person</c>car")]

    def ask(a):
        name, how, query = a
        return _post(url, {how: _b64(root / name) if how == "image" else name, "query": query})

    with ThreadPoolExecutor(len(asks)) as pool:
        answers = list(pool.map(ask, asks))
    for (name, _, query), (code, got) in zip(asks, answers):
        assert code == 200, got
        want = json.loads(json.dumps(tiny_engine.locate(root / name, query, max_new_tokens=TOKENS).to_dict()))
        for key in ("detections", "text", "tokens", "stop_reason", "steps", "image_size", "query"):
            assert got[key] == want[key], key
    code, status = _get(url + "/status")
    assert code == 200 and status["device"] == "cpu" and status["service"]["requests"] >= 1
    if mode == "local":  # one replica saw all six, sent together within its 200 ms batching window
        assert status["service"]["largest_batch"] >= 2, status["service"]


BAD = [
    ({"image_path": "a.png"}, 422, "query"),  # missing query
    ({"image": "***", "query": "cat"}, 400, "base64"),
    ({"image": base64.b64encode(b"not an image").decode(), "query": "cat"}, 400, "readable image"),
    ({"image_path": "broken.png", "query": "cat"}, 400, "unreadable image"),
    ({"image_path": "../../etc/passwd", "query": "cat"}, 403, "outside"),
    ({"image_path": "missing.png", "query": "cat"}, 404, "not found"),
    ({"image_path": "a.png", "query": "   "}, 422, "query is empty"),
    ({"image_path": "a.png", "query": "cat", "max_new_tokens": 10_000}, 400, "max_new_tokens"),
    ({"image_path": "a.png", "query": "cat", "temperature": -1}, 400, "temperature"),
    ({"image_path": "a.png", "query": "cat", "top_p": 2.0}, 400, "top_p"),
    ({"image_path": "a.png", "image": "AAAA", "query": "cat"}, 400, "exactly one"),
    ({"image_path": "a.png", "query": "cat", "colour": "red"}, 422, "colour"),
]


def test_bad_requests_get_4xx_while_good_ones_are_served(server):
    url, _, _ = server
    good = {"image_path": "a.png", "query": "cat"}
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda body: _post(url, body), [b for b, _, _ in BAD] + [good, good]))
    for (body, code, words), (got_code, got) in zip(BAD, answers):
        assert got_code == code, (body, got)
        assert words in json.dumps(got["detail"]), (body, got)
    assert [c for c, _ in answers[len(BAD):]] == [200, 200]
    assert answers[-1][1]["text"] == answers[-2][1]["text"]
    assert _get(url + "/health") == (200, {"status": "ok"})
    assert _post(url, good)[0] == 200  # still up after the bad ones


def test_serve_command_answers_on_loopback(tiny_ckpt, tmp_path, tiny_engine):
    """`graphrt serve` itself (argument wiring, the uvicorn replica): up, one answer, stopped."""
    import subprocess
    import sys

    random_image(90, 70, seed=1).save(tmp_path / "a.png")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "graphrt.cli", "serve", "--checkpoint", str(tiny_ckpt), "--device",
                             "cpu", "--max-new-tokens", str(TOKENS), "--host", HOST, "--port", str(port),
                             "--image-root", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://{HOST}:{port}"
        _wait_healthy(url, within_s=120)
        code, got = _post(url, {"image_path": "a.png", "query": "cat"})
        assert code == 200
        assert got["text"] == tiny_engine.locate(tmp_path / "a.png", "cat", max_new_tokens=TOKENS).text
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert f"serving {tiny_ckpt} on {url}" in err and "one local replica" in err
