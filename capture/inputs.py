"""The host side of the stages' inputs: per-grid tables kept for the last few image sizes, and the
fills of the vision and prefill inputs through persistent (pinned on CUDA) staging mirrors."""

from __future__ import annotations

import numpy as np
import torch

from graphrt.decode import GenerationConfig
from graphrt.lru import LRU
from graphrt.processor import ProcessedImage, patchify
from graphrt.vision import vision_geometry

from .pipeline import StaticPipeline
from .staging import Staging
from .state import RowState

# Image grids whose input tables (RoPE cos/sin, merge order, position table, patch-order index; ~25 MB
# on the GPU at 1024x768 and ~130 MB at 26,676 patches for the 3B model) are kept; a run over many
# image sizes stays flat. capture/plan.py counts GRIDS_KEPT grids of the largest size.
GRIDS_KEPT = 8


class StageInputs:
    def __init__(self, model, pipe: StaticPipeline):
        self.model, self.pipe = model, pipe
        self._vision = Staging({"merge_index": pipe.merge_index, "v_seqused": pipe.v_seqused})
        self._prefill = Staging({"ids": pipe.p_ids, "is_image": pipe.p_is_image, "image_row": pipe.p_image_row,
                                 "positions": pipe.p_positions, "slots": pipe.p_slots, "seqused": pipe.p_seqused,
                                 "padding": pipe.p_padding_row, "target": pipe.p_target, "window": pipe.p_window})
        self._seeds = Staging(pipe.seed_inputs)
        self.geometry: LRU[tuple] = LRU(GRIDS_KEPT)  # grid -> (cos, sin, merge order, position table)
        self.patch_orders: LRU[torch.Tensor] = LRU(GRIDS_KEPT)  # grid -> pixel gather index
        self._norm = None  # (mean, std) now in the pipeline's normalization buffers
        # What the vision input buffers already hold (only fill_vision and the pipeline's
        # reset_state write them): a robot loop's frames of one size rewrite nothing but pixels.
        self._tables_at: dict[int, tuple[int, int]] = {}  # first row -> grid of the cos/sin/pos rows there
        self._lengths_sent = None  # (bv, p, grids) whose merge_index / v_seqused are on the device
        self._resets = pipe.resets

    def grid_geometry(self, grid: tuple[int, int]):
        def make():
            geo = vision_geometry([grid], self.model.cfg.vision, self.model.device)
            pos = self.model.vision.position_embedding(grid)
            return geo.cos, geo.sin, geo.merge_index.cpu().numpy(), pos

        return self.geometry.get(tuple(grid), make)

    def patch_order(self, grid: tuple[int, int]) -> torch.Tensor:
        """Device index: byte k of the patch-ordered pixels comes from byte index[k] of the HWC image."""
        def make():
            p = self.model.cfg.vision.patch_size
            hwc = torch.arange(grid[0] * p * grid[1] * p * 3).view(grid[0] * p, grid[1] * p, 3)
            # int32: half the bytes of the default int64 (60 MB for the largest image, 3B model)
            return patchify(hwc, grid).reshape(-1).to(self.model.device, torch.int32)

        return self.patch_orders.get(tuple(grid), make)

    def fill_vision(self, images: list[ProcessedImage], bv: int, p: int) -> None:
        pipe = self.pipe
        if pipe.resets != self._resets:  # warm-up values overwrote the buffers
            self._tables_at.clear()
            self._lengths_sent, self._resets = None, pipe.resets
        if (images[0].mean, images[0].std) != self._norm:
            cols = pipe.pix_mean.shape[0] // 3
            pipe.pix_mean.copy_(torch.tensor(images[0].mean).repeat_interleave(cols))
            pipe.pix_std.copy_(torch.tensor(images[0].std).repeat_interleave(cols))
            self._norm = (images[0].mean, images[0].std)
        geometry = [self.grid_geometry(im.grid) for im in images]  # once each (an LRU of 8 grids)
        if any((im.mean, im.std) != (images[0].mean, images[0].std) for im in images):
            raise ValueError("images of one batch must share the normalization constants")
        i = 0
        while i < len(images):
            k = _adjacent_run(images, i, pipe.rgb_stage.device)
            im, n, start = images[i], images[i].num_patches, i * p
            order = self.patch_order(im.grid)
            # uint8 HWC -> patch order, read where the resize left it (no staging copy on the device)
            if k > 1:  # frames resized together lie back to back: one gather for the run
                size = im.rgb.numel()
                src = torch.as_strided(im.rgb, (k, size), (size, 1))
                dst = pipe.pixels_u8[start : start + k * p].view(k, -1)[:, :size]
                dst.copy_(torch.index_select(src, 1, order))
            else:
                src = im.rgb.view(-1)
                if src.device != pipe.rgb_stage.device:  # resized on the host: to the device first
                    src = pipe.rgb_stage[: src.numel()]
                    src.copy_(im.rgb.view(-1))
                torch.index_select(src, 0, order, out=pipe.pixels_u8[start : start + n].view(-1))
            i += k
        self._fill_tables(images, geometry, p)
        lengths = (bv, p, tuple(im.grid for im in images))
        if lengths == self._lengths_sent:
            return
        host = self._vision.fill()
        merge, used = host["merge_index"], host["v_seqused"]
        for i, im in enumerate(images):
            n, start = im.num_patches, i * p
            merge[start : start + n] = geometry[i][2] + start
            merge[start + n : start + p] = start
            used[i] = n
        for i in range(len(images), bv):  # padding slots
            merge[i * p : (i + 1) * p] = i * p
            used[i] = p
        self._vision.send({"merge_index": bv * p, "v_seqused": bv})
        self._lengths_sent = lengths

    def _fill_tables(self, images: list[ProcessedImage], geometry: list[tuple], p: int) -> None:
        """RoPE cos/sin and position rows of every image's slot: one copy per run of consecutive
        images of one grid (a batch of equal frames: 3 launches, not 3 per image), none for a run
        whose slots already hold its grid's rows."""
        pipe, i = self.pipe, 0
        while i < len(images):
            grid, k = images[i].grid, 1
            while i + k < len(images) and images[i + k].grid == grid:
                k += 1
            cos, sin, _, pos = geometry[i]
            n = cos.shape[0]
            if any(self._tables_at.get(j * p) != grid for j in range(i, i + k)):
                for dst, src in ((pipe.cos, cos), (pipe.sin, sin), (pipe.pos, pos)):
                    slots = dst[i * p : (i + k) * p].view(k, p, *src.shape[1:])[:, :n]
                    slots.copy_(src.unsqueeze(0).expand(k, *src.shape))
                self._tables_written(i * p, (i + k) * p, p, grid)
            i += k

    def _tables_written(self, lo: int, hi: int, p: int, grid: tuple[int, int]) -> None:
        """Rows [lo, hi) now hold `grid`'s tables at every p-th row: entries overlapping them go."""
        n = grid[0] * grid[1]
        for start, old in list(self._tables_at.items()):
            if start < hi and lo < start + old[0] * old[1]:
                del self._tables_at[start]
        self._tables_at.update({start: grid for start in range(lo, hi, p) if start + n <= hi})

    def fill_prefill(self, segments: list, bb: int, t: int, image_base: list[int],
                      gen: GenerationConfig) -> None:
        """Prompt segments (capture.runtime._Segment) right-aligned in bucket (bb, t) and the seeds
        of the rows they fill; `image_base[k]`: the first vision_out row of batch image k."""
        pipe, n = self.pipe, bb * t
        host = self._prefill.fill()
        for name, value in (("ids", 0), ("is_image", False), ("image_row", 0), ("positions", 0), ("slots", pipe.dead)):
            host[name][:n] = value
        for name, value in (("seqused", 1), ("padding", True), ("target", 0), ("window", False)):  # padding segments
            host[name][:bb] = value
        ids, is_image, image_row, positions, slots = (host[k] for k in ("ids", "is_image", "image_row", "positions", "slots"))
        # merged first round: each segment's last `w` slots are its MTP window (dead for segments
        # without one), the prompt right-aligned before them
        w = pipe.block if pipe.merged else 0
        for i, seg in enumerate(segments):
            prompt = seg.row.prompt.token_array()
            m = seg.stop - seg.start  # stop: the last prompt token too, when the segment forwards a window
            base = i * t + (t - w - m)  # right-aligned, so causal masks align bottom-right
            if seg.window:  # the last prompt token again at its position, then MASK; K/V after the prompt
                win = slice(i * t + t - w, (i + 1) * t)
                ids[win] = [prompt[-1]] + [pipe.ids.text_mask] * (w - 1)
                positions[win] = np.arange(seg.stop - 1, seg.stop - 1 + w)
                slots[win] = np.arange(seg.stop, seg.stop + w)
            ids[base : base + m] = prompt[seg.start : seg.stop]
            positions[base : base + m] = slots[base : base + m] = np.arange(seg.start, seg.stop)
            spans = seg.row.prompt.image_spans
            if len(spans) != len(seg.images):
                raise ValueError(f"prompt has {len(spans)} images, the row names {len(seg.images)}")
            for (start, count), image in zip(spans, seg.images):
                # The part of each image inside this segment (a shared-prefix tail holds the
                # exemplars but not image 1) reads its rows of vision_out.
                lo, hi = max(start, seg.start), min(start + count, seg.stop)
                if lo < hi:
                    s0 = base + lo - seg.start
                    is_image[s0 : s0 + hi - lo] = True
                    image_row[s0 : s0 + hi - lo] = image_base[image] + np.arange(lo - start, hi - start)
            host["seqused"][i], host["padding"][i], host["target"][i] = seg.stop + w, False, seg.target
            host["window"][i] = seg.window
        self._prefill.send(dict(dict.fromkeys(("ids", "is_image", "image_row", "positions", "slots"), n),
                                      seqused=bb, padding=bb, target=bb, window=bb))
        RowState.fill_seeds(self._seeds.fill(), segments, gen, pipe.vocab)
        self._seeds.send({name: bb for name in pipe.seed_inputs})


def _adjacent_run(images: list[ProcessedImage], i: int, device: torch.device) -> int:
    """How many images from i on share i's grid and lie back to back in one tensor on `device`
    (a batch the processor resized together): they can be gathered as one."""
    first = images[i].rgb
    if first.device != device or not first.is_contiguous():
        return 1
    size, k = first.numel(), 1
    storage = first.untyped_storage().data_ptr()
    while i + k < len(images):
        nxt = images[i + k].rgb
        if (images[i + k].grid != images[i].grid or nxt.shape != first.shape or not nxt.is_contiguous()
                or nxt.untyped_storage().data_ptr() != storage or nxt.data_ptr() != first.data_ptr() + k * size):
            break
        k += 1
    return k
