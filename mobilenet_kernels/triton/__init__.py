"""Triton kernels and their launchers (no autograd here: see mobilenet_kernels/ops).

Imported lazily by the ops, so that the package imports without Triton installed.
"""
