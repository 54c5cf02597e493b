"""Triton kernels for CUDA (they also run on CPU tensors under TRITON_INTERPRET=1). Filled in by issue 3."""
