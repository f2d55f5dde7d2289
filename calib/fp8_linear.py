"""FP8 linears that replace graphrt.layers.Linear modules at load time.

    y = (q_x @ q_W^T) * (s_x * s_W[n]) + b

q_W: the bf16 weight quantized per output channel to e4m3 when the engine loads (nothing extra
on disk); s_x: the static activation scale from the calibration file; q_x: the input quantized
with it (calib/quantize.py). The GEMM is `torch._scaled_mm` in row-wise mode ([M, 1] input scales,
[1, N] weight scales, bf16 out, bias in the epilogue), so the per-channel scales cost nothing.

Interface for fused producers (the fused decode step, issue 12): a kernel that produces the
input of a linear (RMSNorm output, SiLU(gate)*up) may quantize it itself with
`linear.inv_input_scale` (float32 scalar tensor, the exact rule in calib/quantize.py), write the
row-scale vector (`linear.input_scale` repeated, [M, 1] float32) and call
`linear.forward_fp8(q, row_scale)`; `linear.forward(x)` does the quantization itself.
graphrt/kernels/fp8_ops.py holds those producers for the fused layer.

Activation modes (`act`, chosen by the scope string's mode item, calib/apply.py):
    "static"   W8A8: the calibrated per-tensor scale (the default)
    "dynamic"  W8A8: per-row (per-token) scales from each row's amax, computed at run time
    "none"     W8A16, weight-only: bf16 activations times the e4m3 weights upcast in the GEMM
               (calib/triton_gemm.w8a16_linear); half the weight bytes, no activation rounding;
               weight_format="int8" (mode w8a16-int8) stores int8 per-channel weights instead
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from graphrt.kernels import env_choice

from . import fp8_mid_gemm, triton_gemm
from .quantize import (FP8, dequantize, quantize_input, quantize_input_dynamic_torch, quantize_input_torch,
                       quantize_weight, quantize_weight_int8)
from .triton_gemm import SKINNY_MAX_ROWS, choose_skinny, skinny_fp8_linear, w8a16_choice, w8a16_linear

ACT_MODES = ("static", "dynamic", "none")
W8A16_TRITON_MAX_ROWS = 2048  # weight-only GEMMs above this many rows use cuBLAS on dequantized weights

log = logging.getLogger(__name__)

# GEMM form that works on each device type, found on first use: "rowwise+bias" (scales and bias
# in the _scaled_mm epilogue), "rowwise" (bias added after), "tensorwise" (channel scales after).
_GEMM_MODE: dict[str, str] = {}
_SKINNY_BROKEN: list[str] = []
_W8A16_BROKEN: list[str] = []
_MID_BROKEN: list[str] = []


def _fallback(device_type: str, mode: str, exc: Exception) -> str:
    log.warning("FP8 GEMM: falling back to %s (%s)", mode, str(exc).splitlines()[0][:200])
    _GEMM_MODE[device_type] = mode
    return mode


def _skinny_broken(exc: Exception) -> None:
    _SKINNY_BROKEN.append(f"{type(exc).__name__}: {exc}"[:300])
    log.warning("Triton skinny FP8 GEMM unavailable, using the quantizer and _scaled_mm: %s", _SKINNY_BROKEN[0])


def skinny_switch_on() -> bool:
    """GRAPHRT_FP8_SKINNY: `triton` (default, the skinny Triton GEMM for <= 64 rows) or `off`."""
    return env_choice("GRAPHRT_FP8_SKINNY", ("triton", "off")) == "triton"


def fast_accumulation(device_type: str) -> bool:
    """Whether _scaled_mm (above the skinny rows) accumulates in Hopper's fast FP8 mode: the default
    on CUDA (measured: no fidelity loss against fp32 accumulation, 7-21% faster prefill GEMMs; the
    comment in FP8Linear); GRAPHRT_FP8_FAST_ACCUM=0 gives fp32 accumulation for A/B."""
    return env_choice("GRAPHRT_FP8_FAST_ACCUM", ("1", "0")) == "1" and device_type == "cuda"


def gemm_mode(device_type: str) -> str:
    accum = "fast" if fast_accumulation(device_type) else "fp32"
    big = "_scaled_mm e4m3 " + _GEMM_MODE.get(device_type, "rowwise+bias") + f", {accum} accumulation"
    if not skinny_switch_on() or device_type != "cuda" or triton_gemm.triton is None:
        return big
    small = (f"Triton skinny GEMM failed ({_SKINNY_BROKEN[0]})" if _SKINNY_BROKEN
             else f"Triton skinny GEMM (split-K, tiles per shape: {triton_gemm.tune_mode()})")
    if fp8_mid_gemm.mid_switch() == "auto":
        big = f"Triton mid GEMM or {big} (per row bucket and shape, timed at warm-up) for 65-1024 rows, {big}"
    return f"{small} for <= {SKINNY_MAX_ROWS} rows, {big} above"


class FP8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, input_scale: float, name: str = "",
                 act: str = "static", weight_format: str = "e4m3"):
        super().__init__()
        if weight.dim() != 2:
            raise ValueError("FP8Linear takes a 2-D weight")
        if act not in ACT_MODES:
            raise ValueError(f"act must be one of {', '.join(ACT_MODES)}, not {act!r}")
        if weight_format not in ("e4m3", "int8") or (weight_format == "int8" and act != "none"):
            raise ValueError(f"weight format {weight_format!r} with act={act!r}: int8 weights are weight-only "
                             "(act='none'); e4m3 takes any act")
        self.act, self.weight_format = act, weight_format
        if not input_scale > 0 or input_scale != input_scale or input_scale == float("inf"):
            raise ValueError(f"{name or 'linear'}: input scale must be positive and finite, got {input_scale}")
        self.name = name
        self.out_features, self.in_features = weight.shape
        self.out_dtype = weight.dtype
        q, s = quantize_weight_int8(weight) if weight_format == "int8" else quantize_weight(weight)
        # [N, K] row-major e4m3 (int8 in the w8a16-int8 mode); _scaled_mm takes its transpose
        # (column-major [K, N]) without a copy.
        self.register_buffer("weight_fp8", q, persistent=False)
        self.register_buffer("weight_scale", s, persistent=False)  # [1, N] float32
        self.register_buffer("bias", None if bias is None else bias.detach().clone(), persistent=False)
        dev = weight.device
        self.register_buffer("input_scale", torch.tensor(float(input_scale), dtype=torch.float32, device=dev),
                             persistent=False)
        self.register_buffer("inv_input_scale", 1.0 / self.input_scale, persistent=False)
        self.register_buffer("one", torch.ones((1, 1), dtype=torch.float32, device=dev), persistent=False)
        # the switches are read on every device, so a bad value is refused on CPU too
        self.use_triton = env_choice("GRAPHRT_FP8_QUANT", ("triton", "torch")) == "triton" and dev.type == "cuda"
        # _scaled_mm (above 64 rows: prefill, steps at B >= 8) with Hopper's fast FP8 accumulation
        # by default (fast_accumulation): 7-21% faster at B=32 prefill size for a GEMM error of 0.19-0.30%
        # against 0.17% with fp32 accumulation (the bf16 output rounding), both far below the e4m3
        # operands' own ~3.7% (H100, benchmarks/fp8_skinny_ab.py --prefill-rows; docs/notes.md).
        self.fast_accum = fast_accumulation(dev.type)
        # Rows <= 64 (decode steps): the Triton skinny GEMM (calib/triton_gemm.py), bf16 models on CUDA.
        self.use_skinny = (skinny_switch_on() and dev.type == "cuda" and weight.dtype == torch.bfloat16
                           and triton_gemm.triton is not None)
        # 65-1024 rows (steps at B >= 8, the B=1 prefill): the Triton FP8 GEMM of calib/fp8_mid_gemm.py where
        # the warm-up timing found it faster than _scaled_mm; GRAPHRT_FP8_MID (read per call, refused here if bad)
        fp8_mid_gemm.mid_switch()
        self.mid_capable = (dev.type == "cuda" and weight.dtype == torch.bfloat16 and weight_format == "e4m3"
                            and fp8_mid_gemm.triton is not None)

    @classmethod
    def from_linear(cls, linear: nn.Module, input_scale: float, name: str = "", act: str = "static",
                    weight_format: str = "e4m3") -> "FP8Linear":
        return cls(linear.weight.data, None if linear.bias is None else linear.bias.data, input_scale, name, act,
                   weight_format)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}, act={self.act}, "
                f"weights={self.weight_format}, "
                f"input_scale={float(self.input_scale):.4g}")

    def quantize(self, x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.act == "none":
            raise RuntimeError(f"{self.name or 'linear'} is weight-only FP8: its input is not quantized")
        return quantize_input(x2d, self.inv_input_scale, self.input_scale, self.use_triton, self.act == "dynamic")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features)
        if self.act == "none":
            return self.forward_w8a16(x2d).view(*lead, self.out_features)
        if self.act == "static" and self.use_triton and self._skinny(x2d.shape[0]) and x2d.dtype == torch.bfloat16:
            try:  # the skinny kernel quantizes x itself by the same rule: one launch, not two
                return skinny_fp8_linear(x2d, self.weight_fp8, self.input_scale, self.weight_scale, self.bias,
                                         config=self.skinny_config(), inv_scale=self.inv_input_scale
                                         ).view(*lead, self.out_features)
            except Exception as exc:  # compile/launch failure on this install: quantizer + _scaled_mm, said once
                _skinny_broken(exc)
        q, row_scale = self.quantize(x2d)
        return self.forward_fp8(q, row_scale).view(*lead, self.out_features)

    def forward_w8a16(self, x2d: torch.Tensor) -> torch.Tensor:
        """Weight-only: bf16 x times the dequantized weights, fp32 accumulation, one bf16 rounding."""
        m = x2d.shape[0]
        choice = w8a16_choice(m, self.out_features, self.in_features) if self.use_skinny else None
        if self.use_skinny and (m > W8A16_TRITON_MAX_ROWS or choice == "cublas"):
            # compute-bound sizes (prefill): cuBLAS on weights dequantized to bf16 for this call
            # (~5 bytes per weight moved; bf16 rounding of the dequantized weight adds ~0.1% to
            # the e4m3 weight's ~2.6% error)
            w = (self.weight_fp8.float() * self.weight_scale.t()).to(self.out_dtype)
            return torch.nn.functional.linear(x2d, w, self.bias)
        if self.use_skinny and not _W8A16_BROKEN:  # CUDA, bf16, triton (the same switch as the skinny GEMM)
            try:
                return w8a16_linear(x2d, self.weight_fp8, self.weight_scale, self.bias, choice)
            except Exception as exc:
                _W8A16_BROKEN.append(f"{type(exc).__name__}: {exc}"[:300])
                log.warning("Triton W8A16 GEMM unavailable, using dequantized weights: %s", _W8A16_BROKEN[0])
        y = x2d.float() @ self.dequantized_weight().t()
        return (y if self.bias is None else y + self.bias.float()).to(self.out_dtype)

    def forward_fp8(self, q: torch.Tensor, row_scale: torch.Tensor) -> torch.Tensor:
        """q [M, K] e4m3 row-major, row_scale [M, 1] float32 -> [M, N] in the model dtype."""
        if self._skinny(q.shape[0]):
            try:
                return skinny_fp8_linear(q, self.weight_fp8, row_scale, self.weight_scale, self.bias,
                                         config=self.skinny_config())
            except Exception as exc:  # compile/launch failure on this install: _scaled_mm, said once
                _skinny_broken(exc)
        if self.mid_capable and q.shape[0] >= fp8_mid_gemm.MID_MIN_ROWS and not _MID_BROKEN:
            y = self._mid(q, row_scale)
            if y is not None:
                return y
        mode = _GEMM_MODE.get(q.device.type, "rowwise+bias")
        if mode == "rowwise+bias":
            try:
                return self._mm(q, row_scale, self.weight_scale, self.bias)
            except RuntimeError as exc:  # this torch build has no bias in the row-wise epilogue
                mode = _fallback(q.device.type, "rowwise", exc)
        if mode == "rowwise":
            try:
                y = self._mm(q, row_scale, self.weight_scale, None)
                return y if self.bias is None else y + self.bias
            except RuntimeError as exc:  # no row-wise scaling at all: per-tensor GEMM, channel scales after
                mode = _fallback(q.device.type, "tensorwise", exc)
        # per-tensor GEMM: both scales after it (row scales differ per row in the dynamic mode)
        y = self._mm(q, self.one, self.one, None).float() * row_scale * self.weight_scale
        return (y if self.bias is None else y + self.bias.float()).to(self.out_dtype)

    def _mid(self, q: torch.Tensor, row_scale: torch.Tensor) -> torch.Tensor | None:
        """The mid-rows Triton GEMM where chosen for this row bucket and shape, else None (_scaled_mm)."""
        # fp32 accumulation asked for (GRAPHRT_FP8_FAST_ACCUM=0): _scaled_mm gives it, the Triton FP8 dot does not
        if fp8_mid_gemm.mid_switch() != "auto" or q.dtype != FP8 or not self.fast_accum:
            return None
        m = q.shape[0]
        cfg = fp8_mid_gemm.choose_mid(m, self.out_features, self.in_features, self.bias is not None, q.device,
                                      self.fast_accum)
        if cfg == "cublas":
            return None
        try:
            return fp8_mid_gemm.mid_fp8_linear(q, self.weight_fp8, row_scale, self.weight_scale, self.bias, cfg,
                                               reserve_rows=fp8_mid_gemm.mid_bucket(m))
        except Exception as exc:  # compile/launch failure on this install: _scaled_mm, said once
            _MID_BROKEN.append(f"{type(exc).__name__}: {exc}"[:300])
            log.warning("Triton FP8 mid GEMM unavailable, using _scaled_mm: %s", _MID_BROKEN[0])
            return None

    def _skinny(self, rows: int) -> bool:
        return self.use_skinny and rows <= SKINNY_MAX_ROWS and not _SKINNY_BROKEN

    def skinny_config(self) -> tuple:
        """(BLOCK_N, BLOCK_K, SPLIT_K, warps, stages) of the skinny kernel for this weight shape:
        measured once per shape outside capture (calib/triton_gemm.choose_skinny), the same for
        every row count, so a row's bits do not depend on the batch size."""
        return choose_skinny(self.out_features, self.in_features, self.weight_fp8.device)

    def _mm(self, q, scale_a, scale_b, bias):
        return torch._scaled_mm(q, self.weight_fp8.t(), scale_a=scale_a, scale_b=scale_b, bias=bias,
                                out_dtype=self.out_dtype, use_fast_accum=self.fast_accum)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """float32 math on the dequantized operands: what forward computes up to GEMM rounding."""
        x2d = x.reshape(-1, self.in_features)
        if self.act == "none":
            xd = x2d.float()
        else:
            q, row_scale = (quantize_input_dynamic_torch(x2d) if self.act == "dynamic"
                            else quantize_input_torch(x2d, self.inv_input_scale, self.input_scale))
            xd = dequantize(q, row_scale)
        y = xd @ dequantize(self.weight_fp8, self.weight_scale.t()).t()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.view(*x.shape[:-1], self.out_features)

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize(self.weight_fp8, self.weight_scale.t())

    @property
    def fp8_dtype(self) -> torch.dtype:
        return FP8
