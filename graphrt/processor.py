"""Image -> normalized 14x14 patches and the patch grid, by the official image-processor rules.

1. If (w//14)*(h//14) exceeds `in_token_limit`, scale both sides by sqrt(limit / patches) (bicubic).
2. Resize up (bicubic) so each side is a multiple of patch*merge = 28: ceil(side/28)*28.
3. Normalize (x/255 - mean) / std and cut into [N, 3, 14, 14] patches, row-major over the grid.
   The processor keeps the resized uint8 image; step 3 runs where the pixels are used (the eager
   path on the CPU, the graph runtime on the GPU inside the vision graph: same float32 arithmetic).
Boxes come back normalized to 0..1000 of the whole (resized, never padded) image.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import PreprocessorConfig
from .errors import InputError
from .gpu_resize import resize_bicubic
from .host_staging import PinnedStaging

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


DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; EngineOptions.max_image_pixels (refused before decoding)


def load_image(image, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Path, bytes, PIL image or numpy array -> RGB PIL image, as the user sees it.

    One rule for every input: an image that carries an EXIF orientation (a file, bytes, or a PIL
    image opened from one) is turned upright, so boxes are in displayed coordinates; arrays carry
    no EXIF and are used as given. Animated files give their first frame. Images above
    `max_pixels` (None: no limit) are refused from their header, before any pixel is decoded.
    """
    if isinstance(image, (str, Path)):
        return _decode(_open_file(Path(image)), f"image {image}", max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        name = f"image bytes ({len(image)} bytes)"
        if not len(image):
            raise InputError(f"{name} are empty")
        return _decode(io.BytesIO(image), name, max_pixels)
    if isinstance(image, Image.Image):
        return _from_pil(image, max_pixels)
    if isinstance(image, np.ndarray):
        name = f"image array (shape {tuple(image.shape)}, {image.dtype})"
        _check_pixels(name, *_array_size(image), max_pixels)
        return to_rgb(_from_array(image), name)
    raise InputError(f"unsupported image type {type(image).__name__}; give a path, bytes, PIL image or numpy array")


def _open_file(path: Path) -> Path:
    try:
        path.stat()
    except (OSError, ValueError):  # missing, unreachable, or a name the OS refuses (NUL byte)
        raise InputError(f"image not found: {path}") from None
    if path.is_dir():
        raise InputError(f"image {path} is a directory, not an image file")
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"image {path} is empty (0 bytes)")
    return path


def _decode(source, name: str, max_pixels: int | None) -> Image.Image:
    """source: a file path or a BytesIO; the header is checked before any pixel is decoded."""
    try:
        with Image.open(source) as img:
            _check_pixels(name, img.width, img.height, max_pixels)
            img.seek(0)  # animated: the first frame
            img.load()
            return to_rgb(ImageOps.exif_transpose(img), name)  # exif_transpose returns a copy
    except InputError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard fires inside Image.open, before ours
        pil_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        if max_pixels is not None and max_pixels <= pil_limit:
            raise InputError(f"{name} has more than {max_pixels:,} pixels (EngineOptions.max_image_pixels): "
                             f"{exc}") from exc
        raise InputError(f"{name} is over Pillow's decompression-bomb limit ({exc}); to allow it raise "
                         f"PIL.Image.MAX_IMAGE_PIXELS as well as EngineOptions.max_image_pixels") from exc
    except Exception as exc:  # noqa: BLE001 -- decoders raise many types (OSError, SyntaxError, ValueError, ...)
        reason = "not a recognized image format" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise InputError(f"unreadable {name}: {reason}") from exc


def _from_pil(image: Image.Image, max_pixels: int | None) -> Image.Image:
    name = f"PIL image (mode {image.mode}, {image.width}x{image.height})"
    _check_pixels(name, image.width, image.height, max_pixels)
    try:
        image.load()
    except ValueError as exc:  # Pillow: "Operation on closed image"
        raise InputError(f"{name} is closed; pass it before calling close() (or pass its path)") from exc
    except Exception as exc:  # noqa: BLE001 -- a lazily opened file may fail to decode here
        raise InputError(f"unreadable {name}: {exc}") from exc
    try:
        # Turned (a new image) only where an orientation says so; else the caller's image itself,
        # which is only read from here on (exif_transpose would copy it: ~0.1-0.2 ms at 640x480).
        turned = image.getexif().get(_EXIF_ORIENTATION_TAG) in range(2, 9)
        upright = ImageOps.exif_transpose(image) if turned else image
    except Exception as exc:  # noqa: BLE001 -- a malformed EXIF block
        raise InputError(f"{name}: unreadable EXIF orientation ({exc})") from exc
    return to_rgb(upright, name)


_EXIF_ORIENTATION_TAG = 0x0112  # what exif_transpose reads (Pillow merges an XMP orientation into getexif too)


def _check_pixels(name: str, width: int, height: int, max_pixels: int | None) -> None:
    if width <= 0 or height <= 0:
        raise InputError(f"{name} has zero size ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(f"{name} has {width}x{height} = {width * height:,} pixels, over the limit of "
                         f"{max_pixels:,} (EngineOptions.max_image_pixels)")


# Modes whose pixels are composited onto white (alpha, premultiplied alpha, transparent palette).
_ALPHA_MODES = {"RGBA": "RGBA", "LA": "LA", "PA": "PA", "La": "LA", "RGBa": "RGBA"}


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Alpha is composited onto white; 16-bit integer modes (I;16*, and I
    holding 16-bit values) scale by 255/65535; float mode F must hold 0..1 (as float arrays do)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert(_ALPHA_MODES[mode]).convert("RGBA")  # La/RGBa: un-premultiply first
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.int64)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise InputError(f"{name}: mode I pixels must hold 16-bit values 0..65535; "
                             f"found {values.min()}..{values.max()}")
        gray = (values * 255 + 32767) // 65535  # round(v * 255 / 65535), exactly: 65535 -> 255, 257 -> 1
        return Image.fromarray(gray.astype(np.uint8)).convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_uint8(np.asarray(image), name)).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise InputError(f"{name}: cannot convert PIL mode {mode} to RGB ({exc})") from exc


def _is_chw(arr: np.ndarray) -> bool:
    """CHW (torch layout): first axis 1/3/4 channels and a last axis too long to be channels."""
    return arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] > 4


def _array_size(arr: np.ndarray) -> tuple[int, int]:
    """(width, height) of an array in any accepted layout (for the pixel limit, before conversion)."""
    if arr.ndim == 2:
        return arr.shape[1], arr.shape[0]
    if _is_chw(arr):
        return arr.shape[2], arr.shape[1]
    if arr.ndim == 3:
        return arr.shape[1], arr.shape[0]
    return 1, 1  # wrong ndim: _from_array says so


def _from_array(arr: np.ndarray) -> Image.Image:
    """Array conventions: HW (gray), HWC with 1, 3 (RGB) or 4 (RGBA) channels, or CHW when the first
    axis is 1/3/4 and the last is longer than 4; dtype uint8 (0..255) or float (0..1, finite).
    Everything else is refused: nothing is clipped or rescaled behind the caller's back."""
    name = f"image array (shape {tuple(arr.shape)}, {arr.dtype})"
    if _is_chw(arr):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise InputError(f"{name}: expected HW, HWC with 1/3/4 channels, or CHW")
    if arr.size == 0:
        raise InputError(f"{name} has zero size")
    if arr.dtype.kind == "f":
        arr = _float_to_uint8(arr, name)
    elif arr.dtype != np.uint8:
        raise InputError(f"{name}: dtype {arr.dtype} is not accepted; give uint8 (0..255) or float (0..1)")
    return Image.fromarray(np.ascontiguousarray(arr))


def _float_to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    """Float pixels in 0..1 -> uint8 (round to nearest); NaN/inf or values outside 0..1 are refused."""
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InputError(f"{name} holds NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        hint = " (0..255 floats? divide by 255 or pass uint8)" if hi > 1.0 else ""
        raise InputError(f"{name}: float pixels must be in 0..1; found {lo:g}..{hi:g}{hint}")
    return np.rint(arr * 255.0).astype(np.uint8)


class ImageProcessor:
    def __init__(self, cfg: PreprocessorConfig, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 resize_device: torch.device | str | None = None, staging: PinnedStaging | None = None):
        """`max_pixels`: larger images are refused before decoding (EngineOptions.max_image_pixels).
        `resize_device`: where the resizes run (None: PIL on the host). On a GPU they run as
        integer kernels bit-identical to PIL's (graphrt/gpu_resize.py), so the host only hands
        over the decoded pixels. `staging`: the host pixels go up through its pinned blocks,
        copied by its threads (graphrt/host_staging.py; EngineOptions.pinned_intake); None:
        pageable copies, one image at a time."""
        self.cfg = cfg
        self.max_pixels = max_pixels
        self.resize_device = torch.device(resize_device) if resize_device is not None else None
        self.staging = staging

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
        """Same pixels as `rescale`, as a uint8 [H, W, 3] tensor on `device`. Both resizes run
        there, each as PIL runs it (graphrt/gpu_resize.py: same fixed-point arithmetic, same pass
        order for the installed Pillow): the downscale to the patch budget (only images above
        ~5 MP), then the pad-up to multiples of 28. The host only hands over the decoded pixels."""
        return self.rescale_many_on_device([image], device)[0]

    def rescale_many_on_device(self, images: list[Image.Image], device: torch.device) -> torch.Tensor:
        """`rescale_on_device` of equal-size RGB images at once: uint8 [B, H, W, 3] on `device`.
        The images go into one device buffer and every resize pass is one launch for the whole
        batch (each image's arithmetic is exactly its own: the batch only adds outer rows)."""
        width, height = images[0].size
        if any(im.size != (width, height) for im in images):
            raise ValueError("rescale_many_on_device takes images of one size")
        capped = self.capped_size(width, height)
        target = self.rounded_size(*capped)
        self._check_grid(*target)
        # PIL's own RGBX buffer goes over as it is where it can (no packing copy on the host:
        # 0.43 of 0.86 ms at 640x480 on the H100 host); the first resize pass reads its RGB bytes
        # (the pad byte is never loaded). Images larger than Pillow's one block are packed first.
        with contextlib.ExitStack() as held:
            views = [held.enter_context(pil_rgbx(im)) for im in images]
            if any(v is None for v in views):
                views = [host_pixels(im) for im in images]
            batch = self._upload(views, device)
        if capped != (width, height):
            batch = resize_bicubic(batch, capped, channels=3)
        return resize_bicubic(batch, target, channels=3)  # a copy even where no side changes

    def _upload(self, views: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        """Equal-shape host pixel views -> one [B, H, W, C] tensor on `device` (a copy: PIL's
        bytes are never shared). Through `staging` where it is given and wants them (a batch of
        4 MiB or more, each image within a block): the copy out of PIL's memory (the cost: ~6 GB/s
        on one thread, ~10 GB/s on the ring's 4, H100 host) split over its threads. Otherwise
        pageable copies, non-blocking: such a copy returns once the driver has staged its source
        (CUDA's "API synchronization behavior"), so the views may go at once, and the host does
        not wait for the GPU at each image as a blocking copy does (torch synchronizes the stream
        after one)."""
        staging = self.staging
        if staging is not None and staging.device == device and staging.wants(views):
            return staging.upload(views)
        if device.type == "cpu":
            return torch.stack(views)
        batch = torch.empty((len(views), *views[0].shape), dtype=torch.uint8, device=device)
        for dst, view in zip(batch, views):
            dst.copy_(view, non_blocking=True)
        return batch

    def _check_grid(self, width: int, height: int) -> None:
        p = self.cfg.patch_size
        if width // p >= MAX_GRID_SIDE or height // p >= MAX_GRID_SIDE:
            raise InputError(f"image too large for the vision position table ({width}x{height})")

    def __call__(self, image) -> ProcessedImage:
        out = self.process_loaded([load_image(image, self.max_pixels)])[0]
        if isinstance(out, InputError):
            raise out
        return out

    def load(self, image) -> Image.Image:
        """A path, bytes, PIL image or array as an upright RGB PIL image (InputError if bad)."""
        return load_image(image, self.max_pixels)

    def process_loaded(self, images: list[Image.Image]) -> list:
        """Loaded RGB images (`load`) -> a ProcessedImage each, or the InputError that image
        raised (an image too large for the position table), in order. On the device, images of
        one size are resized together (`rescale_many_on_device`): a batch of equal frames costs
        one set of launches, not one per image; the pixels are each image's own, bit for bit."""
        out: list = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, rgb in enumerate(images):
            try:
                self._check_grid(*self.target_size(*rgb.size))
            except InputError as exc:
                out[i] = exc
                continue
            if self.resize_device is None:
                out[i] = self._processed(torch.from_numpy(np.array(self.rescale(rgb), dtype=np.uint8)), rgb)
            else:
                by_size.setdefault(rgb.size, []).append(i)
        for members in by_size.values():
            batch = self.rescale_many_on_device([images[i] for i in members], self.resize_device)
            for i, arr in zip(members, batch):  # views of the batch (each contiguous)
                out[i] = self._processed(arr, images[i])
        return out

    def _processed(self, arr: torch.Tensor, rgb: Image.Image) -> ProcessedImage:
        p = self.cfg.patch_size
        return ProcessedImage(arr, (arr.shape[0] // p, arr.shape[1] // p), rgb.size,
                              tuple(self.cfg.image_mean), tuple(self.cfg.image_std))


def host_pixels(image: Image.Image) -> torch.Tensor:
    """Read-only uint8 [H, W, 3] CPU tensor over an RGB PIL image's bytes, for a copy to the device:
    one copy out of PIL (its tobytes), where np.array would copy once more."""
    arr = np.asarray(image)  # read-only view of PIL's bytes; never written
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array": only read, then copied
        return torch.from_numpy(arr)


class _ArrowSchema(ctypes.Structure):
    pass


_ArrowSchema._fields_ = [("format", ctypes.c_char_p), ("name", ctypes.c_char_p), ("metadata", ctypes.c_char_p),
                         ("flags", ctypes.c_int64), ("n_children", ctypes.c_int64),
                         ("children", ctypes.POINTER(ctypes.POINTER(_ArrowSchema))), ("dictionary", ctypes.c_void_p),
                         ("release", ctypes.c_void_p), ("private_data", ctypes.c_void_p)]


class _ArrowArray(ctypes.Structure):
    pass


# The Arrow C data interface's structs (a stable ABI: arrow.apache.org/docs/format/CDataInterface.html)
_ArrowArray._fields_ = [("length", ctypes.c_int64), ("null_count", ctypes.c_int64), ("offset", ctypes.c_int64),
                        ("n_buffers", ctypes.c_int64), ("n_children", ctypes.c_int64),
                        ("buffers", ctypes.POINTER(ctypes.c_void_p)),
                        ("children", ctypes.POINTER(ctypes.POINTER(_ArrowArray))), ("dictionary", ctypes.c_void_p),
                        ("release", ctypes.c_void_p), ("private_data", ctypes.c_void_p)]
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


@contextlib.contextmanager
def pil_rgbx(image: Image.Image):
    """uint8 [H, W, 4] CPU tensor over an RGB PIL image's own memory (Pillow keeps RGB as RGBX),
    valid inside the block; None where Pillow cannot export it that way (Pillow before 11.2, or
    an image above its 16 MB block, whose rows are not contiguous). Read only.

    Pillow exports an RGB image through the Arrow C data interface as a fixed-size list of 4
    bytes per pixel; the capsules hold the image's memory until they are released here."""
    view = capsules = None
    if image.mode == "RGB":
        try:
            capsules = image.__arrow_c_array__()
            schema = _ArrowSchema.from_address(_capsule_pointer(capsules[0], b"arrow_schema"))
            array = _ArrowArray.from_address(_capsule_pointer(capsules[1], b"arrow_array"))
            width, height = image.size
            if (schema.format == b"+w:4" and schema.n_children == 1 and schema.children[0].contents.format == b"C"
                    and array.length == width * height and array.offset == 0 and array.n_children == 1):
                child = array.children[0].contents
                if child.offset == 0 and child.length == 4 * width * height and child.n_buffers == 2 \
                        and child.buffers[1]:
                    raw = (ctypes.c_uint8 * child.length).from_address(child.buffers[1])
                    view = torch.frombuffer(raw, dtype=torch.uint8).view(height, width, 4)
        except (AttributeError, ValueError, TypeError):  # no Arrow export, rows not contiguous, ...
            view = None
    try:
        yield view
    finally:
        del view, capsules  # releases Pillow's hold (the capsule's destructor calls release)


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
