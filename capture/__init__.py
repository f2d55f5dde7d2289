"""CUDA-graph capture per bucket (vision encode, prefill, MTP steps): not implemented yet (issue 3).
Until then graphrt runs the eager path of graphrt/generate.py."""
