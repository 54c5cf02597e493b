"""TSDI inside other libraries: hf.py (Hugging Face generation). Each module imports its library itself, so the
kernels and the pipeline never depend on it."""
