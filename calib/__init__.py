"""FP8 static-scale calibration and FP8 linears: not implemented yet. Every matmul already goes
through graphrt.layers.Linear so precision can change per tensor in one place."""
