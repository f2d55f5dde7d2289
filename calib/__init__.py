"""FP8 (e4m3) with static activation scales: calibration files, FP8 linears swapped in at load,
and the FP8-vs-bf16 accuracy report.

    graphrt calibrate --checkpoint DIR --images DIR --out calib.json [--report report.md]
    Engine.from_pretrained(DIR, fp8="calib.json")        # or graphrt locate ... --fp8 calib.json
"""

from .apply import DEFAULT_SCOPE, FP8Info, engine_model, quantize_model, select
from .calibrate import RangeObserver, calibrate
from .calibration import Calibration, CalibrationError, checkpoint_fingerprint
from .fp8_linear import FP8Linear

__all__ = ["Calibration", "CalibrationError", "DEFAULT_SCOPE", "FP8Info", "FP8Linear", "RangeObserver", "calibrate",
           "checkpoint_fingerprint", "engine_model", "quantize_model", "select"]
