"""Triton kernels, installed as ``rdfast.kernels``. Importing this package does not import triton;
``rdfast.kernels.head`` does, and ``rdfast.ops`` imports it only when the Triton backend is used."""
