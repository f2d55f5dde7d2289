"""Weight spec, loader and random-checkpoint writer."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from graphrt import CheckpointError, ModelConfig
from graphrt.model import LocateAnything
from weights import load_weights, weight_spec
from weights.presets import PRESETS
from weights.synth import write_checkpoint


def loaded(ckpt):
    cfg = ModelConfig.from_pretrained(ckpt)
    model = LocateAnything(cfg, torch.float32)
    load_weights(model, ckpt, cfg, progress=False)
    return cfg, model


def test_round_trip_every_parameter_equal(tiny_ckpt):
    cfg, model = loaded(tiny_ckpt)
    tensors = load_file(str(tiny_ckpt / "model.safetensors"))
    params = dict(model.named_parameters())
    for entry in weight_spec(cfg):
        if entry.param is None:
            continue
        dst = params[entry.param]
        if entry.row_offset is not None:
            dst = dst.narrow(0, entry.row_offset, entry.shape[0])
        assert torch.equal(dst, tensors[entry.name]), entry.name
    assert set(tensors) == {e.name for e in weight_spec(cfg)}  # the tied lm_head is stored, as in the release


def test_sharded_checkpoint_with_index_loads_the_same(tiny_ckpt, tmp_path):
    preset = PRESETS["tiny"]
    write_checkpoint(preset.config, preset.layout, tmp_path, seed=0, max_shard_bytes=200_000, progress=False)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    _, a = loaded(tiny_ckpt)
    _, b = loaded(tmp_path)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name


@pytest.fixture
def broken(tiny_ckpt, tmp_path):
    for f in tiny_ckpt.iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


def test_missing_extra_and_misshaped_tensors_are_named(broken):
    path = broken / "model.safetensors"
    tensors = load_file(str(path))
    del tensors["mlp1.1.bias"]
    tensors["vision_model.extra.weight"] = torch.zeros(3)
    tensors["language_model.model.norm.weight"] = torch.zeros(7)
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as err:
        loaded(broken)
    msg = str(err.value)
    assert "1 missing: mlp1.1.bias" in msg
    assert "1 unexpected: vision_model.extra.weight" in msg
    assert "language_model.model.norm.weight [7] (expected [64])" in msg
    assert "\n" not in msg


def test_tied_head_and_rotary_buffers_are_accepted(broken):
    path = broken / "model.safetensors"
    tensors = load_file(str(path))
    tensors["language_model.lm_head.weight"] = tensors["language_model.model.embed_tokens.weight"].clone()
    tensors["language_model.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    save_file(tensors, str(path))
    loaded(broken)


def test_directory_without_config_or_weights(tmp_path, broken):
    with pytest.raises(CheckpointError, match="no config.json"):
        ModelConfig.from_pretrained(tmp_path / "nothing")
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no safetensors weights"):
        loaded(broken)


def test_non_locateanything_config_is_refused(tiny_ckpt):
    raw = json.loads((tiny_ckpt / "config.json").read_text())
    with pytest.raises(CheckpointError, match="not a LocateAnything config"):
        ModelConfig.from_dict(dict(raw, model_type="llava", architectures=["LlavaForConditionalGeneration"]))
    raw.pop("box_start_token_id")
    with pytest.raises(CheckpointError, match="box_start_token_id"):
        ModelConfig.from_dict(raw)


def test_config_round_trips_through_official_layout():
    for preset in PRESETS.values():
        assert ModelConfig.from_dict(preset.config.to_dict()) == preset.config


def test_3b_spec_counts_the_released_parameters():
    spec = weight_spec(PRESETS["3b"].config)
    stored = sum(torch.Size(e.shape).numel() for e in spec)
    used = sum(torch.Size(e.shape).numel() for e in spec if e.param is not None)
    assert 3.82e9 < stored < 3.84e9  # 3.83B tensors in the release files (tied lm_head stored once more)
    assert 3.5e9 < used < 3.53e9
