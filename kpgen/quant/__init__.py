"""Quantization: float IR -> integer IR (scales, multiplier/shift pairs), with the range analysis and the
kernels' int32 limits beside it."""
