"""Fixed-shape inference replayed from a CUDA graph: one launch per call instead of one per kernel.

At batch 1 a MobileNet's kernels each run for a few microseconds, and the host's work per op
(Python, the dispatcher, the launch) takes longer than the kernel it launches: an eager forward is
host-bound. :func:`graph_inference` captures one forward of an eval-mode model into a CUDA graph
(``torch.cuda.graph``) and replays it, so a call costs one input copy, one graph launch and one
output copy, whatever the number of kernels::

    model = mk.mobilenet_v3_large().cuda().eval().to(memory_format=torch.channels_last)
    run = mk.graph_inference(model, torch.randn(1, 3, 224, 224, device="cuda"), dtype=torch.bfloat16)
    logits = run(image)           # image: the example's shape, dtype and device

It works for any module whose forward is capturable (every kernel on the current stream, no host
synchronisation, no CPU tensors created on the way): our models on every backend, and torchvision's.
What the capture fixes, the replays keep:

- the input's shape, dtype and device (a call with another raises; the layout may differ: the
  input is copied into the captured one's);
- the kernels and their arguments: our eval-mode BatchNorm folds are computed in the warm-up
  forwards and read from memory by the graph, so parameters changed afterwards (``load_state_dict``,
  training) are not seen: capture again;
- autocast: ``dtype`` is the autocast dtype of the captured forward (None: no autocast); the autocast
  state around a later call does not matter.

torch.compile(mode="reduce-overhead") does the same through Inductor; this needs no compilation.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

_AUTOCAST_DTYPES = (torch.float16, torch.bfloat16)


class GraphedInference:
    """A captured forward of ``model`` (see :func:`graph_inference`); call it like the model.

    ``static_input`` and ``static_output`` are the graph's own buffers: a replay reads the first and
    overwrites the second. With ``copy_output`` (the default) a call returns a copy of the output, so
    results of earlier calls stay valid; without it, the buffer itself (valid until the next call)."""

    def __init__(self, model: nn.Module, graph: torch.cuda.CUDAGraph, static_input: torch.Tensor, static_output,
                 copy_output: bool) -> None:
        self.model = model
        self.graph = graph
        self.static_input = static_input
        self.static_output = static_output
        self.copy_output = copy_output

    def __call__(self, input: torch.Tensor):
        _check_like(input, self.static_input)
        self.static_input.copy_(input)
        self.graph.replay()
        if not self.copy_output:
            return self.static_output
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, self.static_output)

    def __repr__(self) -> str:
        s = self.static_input
        return (f"GraphedInference({type(self.model).__name__}, input {tuple(s.shape)} {s.dtype} on {s.device}, "
                f"copy_output={self.copy_output})")


def _check_like(input: torch.Tensor, static: torch.Tensor) -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input: expected a tensor, got {type(input).__name__}")
    for what, got, want in (("shape", tuple(input.shape), tuple(static.shape)), ("dtype", input.dtype, static.dtype),
                            ("device", input.device, static.device)):
        if got != want:
            raise ValueError(f"input: expected {what} {want} (the captured input's: capture again for another), "
                             f"got {got}")


def graph_inference(model: nn.Module, example_input: torch.Tensor, *, dtype: torch.dtype | None = None,
                    warmup: int = 3, copy_output: bool = True) -> GraphedInference:
    """Capture ``model(example_input)`` (no gradients, autocast to ``dtype`` if given) in a CUDA
    graph and return a :class:`GraphedInference` that replays it on new inputs of the same shape,
    dtype and device.

    ``model`` must be in eval mode (a training-mode forward would update BatchNorm running
    statistics on every replay) with its parameters on the example's device. ``warmup`` forwards run
    on a side stream first, as torch.cuda.graph requires: they compile and tune Triton kernels, load
    cuDNN plans and compute our eval folds, none of which may happen during the capture."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("model: expected eval mode (call model.eval() first): a training-mode forward updates the "
                         "BatchNorm running statistics, which a replayed graph would do on every call")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input: expected a tensor, got {type(example_input).__name__}")
    if dtype is not None and dtype not in _AUTOCAST_DTYPES:
        raise TypeError(f"dtype: expected None (no autocast), torch.float16 or torch.bfloat16, got {dtype}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise ValueError(f"warmup: expected an int >= 1, got {warmup!r}")
    if not isinstance(copy_output, bool):
        raise TypeError(f"copy_output: expected a bool, got {type(copy_output).__name__}")
    if example_input.device.type != "cuda":
        raise ValueError(f"example_input: CUDA graphs need a CUDA tensor, got one on {example_input.device}")
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.device != example_input.device:
            raise ValueError(f"model: {name} is on {t.device}, the example input on {example_input.device}: move the "
                             "model to the input's device first")

    static_input = example_input.detach().clone()  # keeps the example's layout (preserve_format)
    autocast = torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.cuda.device(static_input.device), torch.no_grad(), autocast:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                model(static_input)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_output = model(static_input)
    if not any(isinstance(t, torch.Tensor) for t in tree_flatten(static_output)[0]):
        raise TypeError(f"model: expected a forward that returns tensors, got {type(static_output).__name__}")
    return GraphedInference(model, graph, static_input, static_output, copy_output)
