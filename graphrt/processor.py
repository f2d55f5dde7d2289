"""Image -> normalized 14x14 patches and the patch grid, by the official image-processor rules.

1. If (w//14)*(h//14) exceeds `in_token_limit`, scale both sides by sqrt(limit / patches) (bicubic).
2. Resize up (bicubic) so each side is a multiple of patch*merge = 28: ceil(side/28)*28.
3. Normalize (x/255 - mean) / std and cut into [N, 3, 14, 14] patches, row-major over the grid.
   The processor keeps the resized uint8 image; step 3 runs where the pixels are used (the eager
   path on the CPU, the graph runtime on the GPU inside the vision graph: same float32 arithmetic).
Boxes come back normalized to 0..1000 of the whole (resized, never padded) image.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import PreprocessorConfig
from .errors import InputError
from .gpu_resize import resize_bicubic

MAX_GRID_SIDE = 512  # the vision RoPE table is 512 x 512 patches


@dataclass(frozen=True)
class ProcessedImage:
    rgb: torch.Tensor  # [H, W, 3] uint8, resized to the patch grid (the graphs normalize on the GPU)
    grid: tuple[int, int]  # patches (rows, cols)
    size: tuple[int, int]  # original (width, height)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def pixels(self) -> torch.Tensor:
        """[N, 3, patch, patch] float32: normalized patches, row-major over the grid (computed here,
        on the CPU; the graph runtime does the same arithmetic on the GPU)."""
        return patchify(normalize(self.rgb, self.mean, self.std), self.grid)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def num_tokens(self, merge: tuple[int, int]) -> int:
        return self.num_patches // (merge[0] * merge[1])


def load_image(image) -> Image.Image:
    """Path, bytes, PIL image or numpy array (HW, HWC uint8, or float in [0, 1]) -> RGB PIL image."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"image not found: {path}")
        try:
            with Image.open(path) as img:
                img.load()
                image = ImageOps.exif_transpose(img)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise InputError(f"unreadable image {path}: {exc}") from exc
    elif isinstance(image, (bytes, bytearray)):
        try:
            image = Image.open(io.BytesIO(image))
            image.load()
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"unreadable image bytes: {exc}") from exc
    elif isinstance(image, np.ndarray):
        image = _from_array(image)
    elif not isinstance(image, Image.Image):
        raise InputError(f"unsupported image type {type(image).__name__}; give a path, bytes, PIL image or array")
    if image.width == 0 or image.height == 0:
        raise InputError(f"image has zero size ({image.width}x{image.height})")
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Transparency is composited onto white; every other mode (L, P, CMYK, I;16, ...) converts to RGB."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if image.mode == "I;16" or image.mode == "I":
        arr = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if image.mode == "I;16" else max(float(arr.max()), 1.0)
        image = Image.fromarray(np.clip(arr / scale * 255.0, 0, 255).astype(np.uint8))
    return image.convert("RGB")


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise InputError(f"image array must be HW, HWC (3 or 4 channels) or CHW; got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"image has zero size (array shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.clip(arr * 255.0, 0, 255).round().astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InputError(f"image array dtype {arr.dtype} unsupported; use uint8 or float in [0, 1]")
    return Image.fromarray(arr)


class ImageProcessor:
    def __init__(self, cfg: PreprocessorConfig, resize_device: torch.device | str | None = None):
        """`resize_device`: where the pad-up resize runs (None: PIL on the host). On a GPU it runs
        as integer tensor ops bit-identical to PIL's (graphrt/gpu_resize.py), so the host only
        hands over the decoded pixels."""
        self.cfg = cfg
        self.resize_device = torch.device(resize_device) if resize_device is not None else None

    def capped_size(self, width: int, height: int) -> tuple[int, int]:
        """Step 1: shrink to the patch budget, keeping the aspect ratio."""
        p = self.cfg.patch_size
        patches = (width // p) * (height // p)
        if patches <= self.cfg.in_token_limit:
            return width, height
        scale = math.sqrt(self.cfg.in_token_limit / patches)
        return max(1, int(width * scale)), max(1, int(height * scale))

    def rounded_size(self, width: int, height: int) -> tuple[int, int]:
        """Step 2: round each side up to a multiple of patch * merge."""
        step_w = self.cfg.merge_kernel_size[1] * self.cfg.patch_size
        step_h = self.cfg.merge_kernel_size[0] * self.cfg.patch_size
        return math.ceil(width / step_w) * step_w, math.ceil(height / step_h) * step_h

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) an image of this size is resized to, without touching pixels."""
        return self.rounded_size(*self.capped_size(width, height))

    def rescale(self, image: Image.Image) -> Image.Image:
        for size in (self.capped_size(*image.size), self.target_size(*image.size)):
            if size != image.size:
                image = image.resize(size, Image.Resampling.BICUBIC)
        self._check_grid(*image.size)
        return image

    def rescale_on_device(self, image: Image.Image, device: torch.device) -> torch.Tensor:
        """Same pixels as `rescale`, as a uint8 [H, W, 3] tensor on `device`. The downscale to the
        patch budget (only images above ~5 MP) stays in PIL: Pillow 13 picks the order of its two
        passes by size when both sides shrink, so only PIL itself is sure to match there. The
        pad-up to multiples of 28 (every image) never shrinks a side, so its order is fixed
        (horizontal, then vertical) and it runs on the device."""
        capped = self.capped_size(*image.size)
        if capped != image.size:
            image = image.resize(capped, Image.Resampling.BICUBIC)
        target = self.rounded_size(*image.size)
        self._check_grid(*target)
        rgb = torch.from_numpy(np.array(image, dtype=np.uint8)).to(device)
        return resize_bicubic(rgb, target) if target != image.size else rgb

    def _check_grid(self, width: int, height: int) -> None:
        p = self.cfg.patch_size
        if width // p >= MAX_GRID_SIDE or height // p >= MAX_GRID_SIDE:
            raise InputError(f"image too large for the vision position table ({width}x{height})")

    def __call__(self, image) -> ProcessedImage:
        rgb = load_image(image)
        if self.resize_device is not None:
            arr = self.rescale_on_device(rgb, self.resize_device)
        else:
            arr = torch.from_numpy(np.array(self.rescale(rgb), dtype=np.uint8))  # [H, W, 3], a writable copy
        p = self.cfg.patch_size
        return ProcessedImage(arr, (arr.shape[0] // p, arr.shape[1] // p), rgb.size,
                              tuple(self.cfg.image_mean), tuple(self.cfg.image_std))


def normalize(rgb: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [..., 3] -> float32 (x/255 - mean) / std, per channel (IEEE ops: same bits on CPU and GPU)."""
    m = torch.tensor(mean, dtype=torch.float32, device=rgb.device)
    s = torch.tensor(std, dtype=torch.float32, device=rgb.device)
    return (rgb.float() / 255.0 - m) / s


def patchify(arr: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[H, W, 3] -> [N, 3, p, p] patches, row-major over the grid."""
    gh, gw = grid
    p = arr.shape[0] // gh
    return arr.reshape(gh, p, gw, p, 3).permute(0, 2, 4, 1, 3).reshape(gh * gw, 3, p, p).contiguous()
