"""MoonViT: packed varlen batches equal per-image calls; 2D RoPE equals the complex-number form."""

from __future__ import annotations

import torch

from graphrt.attention.sdpa import vision_attention
from graphrt.vision import apply_rope_2d, vision_geometry

from conftest import random_image


@torch.no_grad()
def test_packed_images_equal_one_call_per_image(tiny_engine):
    images = [tiny_engine.processor(random_image(w, h, seed=i)) for i, (w, h) in
              enumerate([(130, 96), (56, 56), (300, 90)])]
    packed = tiny_engine.encode_images(images)
    for image, got in zip(images, packed):
        alone = tiny_engine.encode_images([image])[0]
        torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-5)
    assert [p.shape[0] for p in packed] == [im.num_tokens((2, 2)) for im in images]


def test_rope_2d_matches_complex_multiplication(tiny_engine):
    cfg = tiny_engine.cfg.vision
    h, w, d = 4, 6, cfg.head_dim
    geo = vision_geometry([(h, w)], cfg, "cpu")
    x = torch.randn(h * w, 2, d)
    freqs = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 4)[: d // 4].float() / d))
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    x_cis = torch.polar(torch.ones(h * w, d // 4), xs.reshape(-1, 1).float() * freqs)
    y_cis = torch.polar(torch.ones(h * w, d // 4), ys.reshape(-1, 1).float() * freqs)
    cis = torch.stack([x_cis, y_cis], dim=-1).reshape(h * w, d // 2)
    want = torch.view_as_real(torch.view_as_complex(x.view(h * w, 2, d // 2, 2)) * cis[:, None]).flatten(-2)
    torch.testing.assert_close(apply_rope_2d(x, geo.cos, geo.sin), want, rtol=1e-5, atol=1e-5)


def test_merge_groups_2x2_neighbours(tiny_engine):
    geo = vision_geometry([(2, 4), (2, 2)], tiny_engine.cfg.vision, "cpu")
    assert geo.merge_index.tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 10, 11]


def test_position_table_used_as_is_at_native_grid(tiny_engine):
    vit = tiny_engine.model.vision
    table = vit.pos_emb
    assert torch.equal(vit.position_embedding(tuple(table.shape[:2])), table.reshape(-1, table.shape[-1]))


def test_vision_attention_is_block_diagonal():
    from types import SimpleNamespace

    q = torch.randn(10, 2, 8)
    out = vision_attention(q, q, q, SimpleNamespace(seqlens=[4, 6]))
    out2 = vision_attention(q[4:], q[4:], q[4:], SimpleNamespace(seqlens=[6]))
    torch.testing.assert_close(out[4:], out2)
