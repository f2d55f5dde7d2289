"""The graphrt command: help texts, JSON output, one-line errors with exit status 2, output
targets checked before any work, and JSONL runs where every bad row becomes an error row while
every good row is answered with the same tokens as Engine.locate."""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import sys
import zlib

import pytest
from safetensors.torch import load_file, save_file

import graphrt
from conftest import random_image, write_mixed_jsonl
from graphrt import CheckpointError, cli
from graphrt.engine import LocateResult


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "graphrt.cli", *args], capture_output=True, text=True, timeout=300)


def run_main(capsys, *args):
    """The command in this process (no interpreter start): (exit status, stdout, stderr)."""
    try:
        code = cli.main(list(args))
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def commands(parser: argparse.ArgumentParser):
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


# ---------------------------------------------------------------------- help

def test_every_option_of_every_command_has_help_with_its_default():
    parser = cli.build_parser()
    for name, command in [("graphrt", parser), *commands(parser).items()]:
        formatter = command._get_formatter()
        for action in command._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {action.option_strings}: no help text"
            text = formatter._get_help_string(action) % {"default": action.default}
            assert action.required or "default" in text.lower() or "required" in text.lower() \
                or isinstance(action, argparse._VersionAction), f"{name} {action.option_strings}: no default in {text!r}"
    locate = commands(parser)["locate"].format_help()
    for shown in ("(default: 2048)", "(default: detect)", "(default: auto)", "(default: fast)", "(default: jsonl)",
                  "up to 5", "tokens past it"):
        assert shown in " ".join(locate.split()), shown


def test_top_level_help_and_version(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    for command in ("locate", "status", "synth-checkpoint", "COMMAND --help"):
        assert command in out
    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and out.strip() == f"graphrt {graphrt.__version__}"


def test_status_lists_only_options_that_matter_to_it():
    status = commands(cli.build_parser())["status"]
    options = {s for a in status._actions for s in a.option_strings}
    assert options == {"-h", "--help", "--checkpoint", "--device", "--dtype", "--graphs", "--kernels", "--fp8",
                       "--memory-gb"}


# ---------------------------------------------------------------------- single image

def test_locate_json(tiny_ckpt, tmp_path):
    img = tmp_path / "a.png"
    random_image(90, 70).save(img)
    out = run_cli("locate", "--checkpoint", str(tiny_ckpt), "--image", str(img), "--query", "person</c>car", "--json",
                  "--max-new-tokens", "12")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["image_size"] == [90, 70] and result["tokens"] and "detections" in result


def test_out_with_a_single_image_writes_the_file(tiny_ckpt, tiny_engine, tmp_path, capsys):
    img = tmp_path / "a.png"
    random_image(90, 70, seed=3).save(img)
    code, stdout, err = run_main(capsys, "locate", "--checkpoint", str(tiny_ckpt), "--image", str(img), "--query",
                                 "cat", "--max-new-tokens", "12", "--device", "cpu", "--out", str(tmp_path / "r.jsonl"))
    assert code == 0, err
    rows = [json.loads(t) for t in (tmp_path / "r.jsonl").read_text().splitlines()]
    want = tiny_engine.locate(img, "cat", max_new_tokens=12)
    assert len(rows) == 1 and rows[0]["line"] == 1 and rows[0]["text"] == want.text
    assert "90x70" in stdout  # still printed


def test_output_targets_are_checked_before_the_checkpoint_loads(tiny_ckpt, tmp_path, capsys, monkeypatch):
    img = tmp_path / "a.png"
    random_image(30, 30).save(img)
    (tmp_path / "file").write_text("a file, not a folder")
    loads = []
    monkeypatch.setattr(cli, "_engine", lambda *a: loads.append(a) or pytest.fail("engine loaded"))
    base = ["locate", "--checkpoint", str(tiny_ckpt), "--image", str(img), "--query", "cat"]
    for extra, words in [
        (["--out", str(tmp_path / "missing" / "r.jsonl")], "does not exist"),
        (["--out", str(tmp_path)], "is a folder"),
        (["--overlay", str(tmp_path / "file" / "drawn")], "--overlay"),
        (["--jsonl", str(tmp_path / "r.jsonl")], "--image (file or folder) or --jsonl"),
        (["--device", "tpu"], "--device tpu"),
        (["--temperature", "nan"], "--temperature nan"),
        (["--max-new-tokens", "0"], "--max-new-tokens 0"),
    ]:
        code, _, err = run_main(capsys, *base, *extra)
        assert code == 2 and words in err, (extra, err)
    assert not loads


def test_cuda_without_cuda_is_one_line(tiny_ckpt, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    img = tmp_path / "a.png"
    random_image(30, 30).save(img)
    for command in (["locate", "--image", str(img), "--query", "cat"], ["status"]):
        code, _, err = run_main(capsys, command[0], "--checkpoint", str(tiny_ckpt), "--device", "cuda", *command[1:])
        assert code == 2 and err.count("\n") == 1 and "no CUDA device" in err


def test_broken_checkpoint_names_tensors_without_traceback(tiny_ckpt, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    tensors = load_file(str(ckpt / "model.safetensors"))
    del tensors["language_model.model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(ckpt / "model.safetensors"))
    img = tmp_path / "a.png"
    random_image(30, 30).save(img)
    out = run_cli("locate", "--checkpoint", str(ckpt), "--image", str(img), "--query", "cat")
    assert out.returncode == 2
    assert "language_model.model.layers.1.mlp.up_proj.weight" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_bad_inputs(tiny_ckpt, tmp_path):
    img = tmp_path / "a.png"
    random_image(30, 30).save(img)
    for args, words in [
        (["--image", str(tmp_path / "nope.png"), "--query", "cat"], "image not found"),
        (["--image", str(img), "--query", " "], "query is empty"),
        (["--image", str(img), "--query", "cat", "--device", "tpu"], "--device tpu"),
    ]:
        out = run_cli("locate", "--checkpoint", str(tiny_ckpt), *args)
        assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr, out.stderr
    out = run_cli("locate", "--checkpoint", str(tmp_path / "empty"), "--image", str(img), "--query", "cat")
    assert out.returncode == 2 and "not found" in out.stderr


def test_status(tiny_ckpt):
    out = run_cli("status", "--checkpoint", str(tiny_ckpt), "--device", "cpu")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["device"] == "cpu" and status["graph_runtime"].startswith("off")


def test_synth_checkpoint_layouts(tmp_path, capsys):
    code, _, err = run_main(capsys, "synth-checkpoint", "--preset", "tiny", "--out", str(tmp_path / "t"))
    assert code == 0, err
    assert (tmp_path / "t" / "model.safetensors").is_file() and not (tmp_path / "t" / "model.safetensors.index.json").exists()
    code, _, err = run_main(capsys, "synth-checkpoint", "--out", str(tmp_path / "s"), "--shard-mb", "0.5")
    assert code == 0, err
    index = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3 and not (tmp_path / "s" / "model.safetensors").exists()


# ---------------------------------------------------------------------- JSONL

def bomb_png(path, width=20000, height=20000):
    """A PNG whose header claims width x height (PIL refuses it as a decompression bomb at open)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_jsonl_with_broken_rows(tiny_ckpt, tiny_engine, tmp_path):
    """Every good row is answered (with the same tokens as Engine.locate), every bad row is
    reported with its line number, and the summary counts both."""
    write_mixed_jsonl(tmp_path)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    out = run_cli("locate", "--checkpoint", str(tiny_ckpt), "--jsonl", str(tmp_path / "req.jsonl"),
                  "--image-root", str(tmp_path), "--max-new-tokens", "12", "--device", "cpu",
                  "--out", str(tmp_path / "out.jsonl"), "--overlay", str(tmp_path / "overlay"))
    assert out.returncode == 0, out.stderr
    records = {r["line"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert sorted(records) == list(range(1, 9))
    assert sorted(k for k, r in records.items() if "error" in r) == [2, 3, 4, 5, 6]
    assert "3 answered, 5 errors (lines 2, 3, 4, 5, 6)" in out.stderr
    for line, (image, query) in {1: (a, "cat"), 7: (b, ["person", "car"]), 8: (a, "dog")}.items():
        want = tiny_engine.locate(image, query, max_new_tokens=12)
        assert records[line]["text"] == want.text
    assert len(list((tmp_path / "overlay").glob("*.png"))) == 3


def test_jsonl_odd_encodings_and_types_are_error_rows_and_good_rows_answered(tiny_ckpt, tiny_engine, tmp_path):
    """BOM, CRLF, blank lines, a Latin-1 line, queries of the wrong type, bad temperatures, a
    decompression bomb and a query holding the image placeholder: each bad row is an error row on
    its own line number; the good rows around them are answered as Engine.locate answers them."""
    a = tmp_path / "a.png"
    random_image(60, 40, seed=5).save(a)
    bomb_png(tmp_path / "bomb.png")
    row = lambda **kw: json.dumps(kw).encode()  # noqa: E731
    lines = [
        b"\xef\xbb\xbf" + row(image="a.png", query="cat"),                 # 1 good, after a BOM
        row(image="a.png", query=None),                                    # 2 query null
        b"",                                                               # 3 blank
        row(image="a.png", query=7),                                       # 4 query a number
        row(image="a.png", query={"text": "cat"}),                         # 5 query an object
        b'{"image": "a.png", "query": "caf\xe9"}',                         # 6 Latin-1 bytes
        b'{"image": "a.png", "query": "dog", "temperature": NaN}',         # 7 NaN
        row(image="a.png", query="dog", temperature="hot"),               # 8 a string
        b"   ",                                                            # 9 blank
        row(image="bomb.png", query="cat"),                                # 10 decompression bomb
        row(image="a.png", query="a <image-1> here"),                      # 11 placeholder in the query
        row(image="a.png", query=["person", 3]),                           # 12 list with a number
        row(image="a.png", query="dog"),                                   # 13 good
        row(image="a.png", query=["person", "car"], temperature=0),        # 14 good
    ]
    (tmp_path / "req.jsonl").write_bytes(b"\r\n".join(lines) + b"\r\n")
    out = run_cli("locate", "--checkpoint", str(tiny_ckpt), "--jsonl", str(tmp_path / "req.jsonl"),
                  "--image-root", str(tmp_path), "--max-new-tokens", "10", "--device", "cpu",
                  "--out", str(tmp_path / "out.jsonl"))
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    records = {r["line"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert sorted(records) == [1, 2, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14]
    errors = {k: r["error"] for k, r in records.items() if "error" in r}
    assert sorted(errors) == [2, 4, 5, 6, 7, 8, 10, 11, 12]
    assert "got null" in errors[2] and "got a number" in errors[4] and "got an object" in errors[5]
    assert "not UTF-8" in errors[6] and "0xe9" in errors[6]
    assert "temperature" in errors[7] and "temperature" in errors[8]
    assert "got a list holding a non-string" in errors[12]
    assert "3 answered, 9 errors" in out.stderr
    for line, query in {1: "cat", 13: "dog", 14: ["person", "car"]}.items():
        assert records[line]["text"] == tiny_engine.locate(a, query, max_new_tokens=10).text, line


class FakeEngine:
    """locate_stream in chunks of 3; a chunk holding a query "boom" raises before yielding."""

    def __init__(self, error):
        self.error = error
        self.calls = 0

    def locate_stream(self, pairs, temperatures, errors):
        assert errors == "report"
        self.calls += 1
        for start in range(0, len(pairs), 3):
            chunk = range(start, min(start + 3, len(pairs)))
            if any(pairs[i][1] == "boom" for i in chunk):
                raise self.error
            for i in chunk:
                yield i, LocateResult([], f"answer {pairs[i][1]}", [], "end", 1, (1, 1), 0, 0, 0, query=pairs[i][1])


@pytest.mark.parametrize("error, message", [(ZeroDivisionError("oops"), "ZeroDivisionError: oops"),
                                            (CheckpointError("template broke"), "template broke")])
def test_one_failing_row_costs_only_its_own_answer(error, message):
    queries = [f"q{i}" for i in range(11)]
    queries[4] = queries[9] = "boom"
    engine = FakeEngine(error)
    results = dict(cli.answer_rows(engine, [("img", q) for q in queries], [None] * len(queries)))
    assert sorted(results) == list(range(11))
    for i, q in enumerate(queries):
        if q == "boom":
            assert results[i].error == message
        else:
            assert results[i].error is None and results[i].text == f"answer {q}"
    assert engine.calls < 2 * len(queries)
