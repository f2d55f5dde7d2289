"""`graphrt locate --ray` on a local Ray cluster (2 CPUs, 2 fake GPUs, the tiny random checkpoint,
eager on the CPU): the same rows as the single-process CLI, a killed engine's rows retried, a
stopped run resumed without duplicates. Random weights: rows are compared, never read."""

from __future__ import annotations

import json
import os
import sys

import pytest

ray = pytest.importorskip("ray", reason="needs the Ray extra: pip install 'graphrt[ray]'")

from graphrt import cli  # noqa: E402
from graphrt.batch_io import read_jsonl  # noqa: E402
from graphrt.engine import EngineOptions  # noqa: E402
from graphrt.decode import GenerationConfig  # noqa: E402
from graphrt.scaleout import offline  # noqa: E402

from conftest import random_image, write_mixed_jsonl  # noqa: E402

TOKENS = "12"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=2, object_store_memory=150 * 2**20, include_dashboard=False,
             log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def batch(tmp_path_factory, tiny_ckpt):
    """A JSONL of good and bad rows, and the single-process CLI's answer to it."""
    root = tmp_path_factory.mktemp("rows")
    random_image(64, 64, seed=3).save(root / "c.png")
    write_mixed_jsonl(root, [{"image": "c.png", "query": "cup", "temperature": 0.0}, {"image": "b.png", "query": "tree"}])
    ref = root / "ref.jsonl"
    assert cli.main(_args(tiny_ckpt, root, ref)) == 0
    return root, _rows(ref)


def _args(ckpt, root, out, *extra):
    return ["locate", "--checkpoint", str(ckpt), "--jsonl", str(root / "req.jsonl"), "--image-root", str(root),
            "--max-new-tokens", TOKENS, "--device", "cpu", "--out", str(out), *extra]


def _rows(path) -> dict[int, dict]:
    """Output rows by line, each at most once, without the (machine-dependent) timings."""
    rows = [json.loads(t) for t in path.read_text().splitlines()]
    lines = [r["line"] for r in rows]
    assert len(lines) == len(set(lines)), f"duplicate rows: {sorted(lines)}"
    return {r["line"]: {k: v for k, v in r.items() if k != "timings_ms"} for r in rows}


def test_same_rows_as_single_process(cluster, batch, tiny_ckpt, tmp_path, capsys):
    root, ref = batch
    out = tmp_path / "ray.jsonl"
    code = cli.main(_args(tiny_ckpt, root, out, "--ray", "--engines", "2", "--gpus-per-engine", "1",
                          "--overlay", str(tmp_path / "overlay")))
    assert code == 0
    assert _rows(out) == ref
    assert sorted(k for k, r in ref.items() if "error" in r) == [2, 3, 4, 5, 6]
    assert "5 answered, 5 errors (lines 2, 3, 4, 5, 6)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "overlay").glob("*.png")) == \
        ["000001_a.png", "000007_b.png", "000008_a.png", "000009_c.png", "000010_b.png"]


def test_clear_errors_before_any_work(cluster, batch, tiny_ckpt, tmp_path, capsys):
    root, _ = batch
    args = _args(tiny_ckpt, root, tmp_path / "out.jsonl")
    assert cli.main([*args[:-2], "--ray"]) == 2  # no --out
    assert "--ray needs --out" in capsys.readouterr().err
    assert cli.main([*args, "--ray", "--engines", "3", "--gpus-per-engine", "1"]) == 2  # the cluster has 2 GPUs
    assert "need 3 GPUs; the Ray cluster has 2" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_without_ray_the_error_names_the_extra(batch, tiny_ckpt, tmp_path, monkeypatch, capsys):
    root, _ = batch
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    monkeypatch.delitem(sys.modules, "graphrt.scaleout.offline")
    monkeypatch.delattr("graphrt.scaleout.offline")
    assert cli.main([*_args(tiny_ckpt, root, tmp_path / "out.jsonl"), "--ray"]) == 2
    assert "--ray needs Ray (ray is missing): pip install 'graphrt[ray]'" in capsys.readouterr().err


class DiesOnce(offline.EngineWorker):
    """An engine whose process exits in the middle of its first batch (once per marker file)."""

    marker = None  # set by the test; travels with the class (pickled by value)

    def __call__(self, batch):
        if not os.path.exists(self.marker):
            open(self.marker, "w").write(" ".join(map(str, batch["line"])))
            os._exit(1)
        return super().__call__(batch)


def _config(ckpt, engines=1):
    options = EngineOptions(device="cpu", dtype="float32", generation=GenerationConfig(max_new_tokens=int(TOKENS)))
    return offline.OfflineConfig(str(ckpt), options, engines=engines, gpus_per_engine=1, batch_rows=4)


def test_killed_engine_rows_are_retried(cluster, batch, tiny_ckpt, tmp_path):
    root, ref = batch
    DiesOnce.marker = str(tmp_path / "died")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    requests = read_jsonl(root / "req.jsonl", root)
    out = tmp_path / "ray.jsonl"
    summary = offline.run(_config(tiny_ckpt, engines=2), requests, str(out), worker=DiesOnce)
    lost = [int(x) for x in (tmp_path / "died").read_text().split()]
    assert lost, "the engine did not die holding rows"
    assert _rows(out) == ref  # the dead engine's rows are answered all the same, each once
    assert summary["ran"] == 8  # lines 2 and 5 are bad requests, written by the driver


def test_resume_skips_rows_already_written(cluster, batch, tiny_ckpt, tmp_path):
    """A run stopped after three rows (and in the middle of writing a fourth) finishes the rest,
    keeps the three rows as they were (not recomputed), and writes no row twice."""
    root, ref = batch
    out = tmp_path / "ray.jsonl"
    kept = [dict(ref[1], text="written by the first run"), ref[2], ref[7]]
    out.write_text("".join(json.dumps(r) + "\n" for r in kept) + json.dumps(ref[8])[:25])
    requests = read_jsonl(root / "req.jsonl", root)
    summary = offline.run(_config(tiny_ckpt), requests, str(out))
    rows = _rows(out)
    assert summary["skipped"] == 3 and summary["ran"] == 6
    assert rows[1]["text"] == "written by the first run"
    assert {k: v for k, v in rows.items() if k != 1} == {k: v for k, v in ref.items() if k != 1}
    again = offline.run(_config(tiny_ckpt), requests, str(out))
    assert again["ran"] == 0 and again["skipped"] == 10 and _rows(out) == rows


def test_folder_to_coco_as_single_process(cluster, tiny_ckpt, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        random_image(40 + 10 * i, 50, seed=i).save(folder / f"{i}.png")
    common = ["locate", "--checkpoint", str(tiny_ckpt), "--image", str(folder), "--query", "car", "--max-new-tokens",
              "8", "--device", "cpu", "--format", "coco"]
    assert cli.main([*common, "--out", str(tmp_path / "ref.json")]) == 0
    assert cli.main([*common, "--out", str(tmp_path / "ray.json"), "--ray", "--gpus-per-engine", "1"]) == 0
    assert json.loads((tmp_path / "ray.json").read_text()) == json.loads((tmp_path / "ref.json").read_text())
    assert not (tmp_path / "ray.json.rows.jsonl").exists()


def test_task_and_exemplar_rows_as_single_process(cluster, tiny_ckpt, tmp_path):
    """Rows naming a task or a visual prompt reach the engine actors with their fields: a point
    task, an exemplar box (cropped from the image as read), an exemplar image, and a bad box."""
    random_image(90, 70, seed=4).save(tmp_path / "q.png")
    random_image(30, 40, seed=5).save(tmp_path / "ex.png")
    rows = [{"image": "q.png", "query": "the cup", "task": "point"},
            {"image": "q.png", "task": "detect_visual_prompt", "exemplar_box": [100, 100, 600, 700]},
            {"image": "q.png", "task": "detect_visual_prompt", "exemplar": "ex.png"},
            {"image": "q.png", "task": "detect_visual_prompt", "exemplar_box": [600, 100, 100, 700]}]
    (tmp_path / "req.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ref, out = tmp_path / "ref.jsonl", tmp_path / "ray.jsonl"
    assert cli.main(_args(tiny_ckpt, tmp_path, ref)) == 0
    assert cli.main(_args(tiny_ckpt, tmp_path, out, "--ray", "--gpus-per-engine", "1")) == 0
    want = _rows(ref)
    assert _rows(out) == want
    assert [line for line, r in want.items() if "error" in r] == [4]
    assert want[1]["task"] == "point" and want[2]["task"] == want[3]["task"] == "detect_visual_prompt"
