"""Fixed-shape inference and training steps replayed from a CUDA graph: one launch per call instead
of one per kernel.

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

:func:`graph_train_step` does the same for a whole training step (forward, loss, backward and the
optimizer's step: PyTorch's "whole-network capture"), for the same reason at any batch size: a
MobileNet training step launches thousands of small kernels, and the host's work per launch can
take longer than the GPU's::

    step = mk.graph_train_step(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                               F.cross_entropy, images, labels, dtype=torch.bfloat16)
    for images, labels in loader:  # batches of the example's shape
        loss = step(images, labels)

Besides what graph_inference fixes, the optimizer must be capturable (SGD is; Adam and AdamW with
``capturable=True``), float16 autocast is refused (its GradScaler decides on the host whether to
step), the gradients are the graph's own buffers (a replay writes them: do not zero them between
calls), and the warm-up steps, which run for real, are undone (see graph_train_step). The
optimizer's hyperparameters are fixed too: a float learning rate is a constant of the captured
kernels, so a scheduler's later changes are not seen. For a schedule, capture again, or use Adam or
AdamW with ``capturable=True`` and a tensor ``lr`` updated in place (the replays read it from
memory; SGD's step reads a tensor learning rate on the host, which a capture cannot).

torch.compile(mode="reduce-overhead") does the same through Inductor; this needs no compilation.
"""

from __future__ import annotations

import contextlib
from typing import Callable

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


def _autocast(dtype: torch.dtype | None):
    """Autocast to ``dtype`` (None: none) without autocast's weight cache: a cached cast made in the
    warm-up would be read by the graph from memory that the cache frees when the context exits; with
    the cache off, the captured region casts the weights itself (PyTorch's advice for CUDA graphs)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype, cache_enabled=False)


def _check_warmup_and_device(model: nn.Module, warmup: int, examples: dict[str, torch.Tensor]) -> torch.device:
    """The checks both captures share: ``warmup`` an int >= 1, every example a CUDA tensor, the
    model's parameters and buffers on the first example's device; returns that device."""
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise ValueError(f"warmup: expected an int >= 1, got {warmup!r}")
    for name, t in examples.items():
        if t.device.type != "cuda":
            raise ValueError(f"{name}: CUDA graphs need a CUDA tensor, got one on {t.device}")
    device = next(iter(examples.values())).device
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.device != device:
            raise ValueError(f"model: {name} is on {t.device}, the example input on {device}: move the model to "
                             "the input's device first")
    return device


def _capture(device: torch.device, warm_up: Callable[[], object], body: Callable[[], object]):
    """``warm_up()`` on a side stream, as torch.cuda.graph requires (whatever compiles, tunes or
    allocates state once happens there), then ``body()`` captured in a new CUDA graph: returns
    (graph, body's result, whose tensors are the graph's output buffers)."""
    with torch.cuda.device(device):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            warm_up()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            result = body()
    return graph, result


def _check_like(input: torch.Tensor, static: torch.Tensor, name: str = "input") -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(input).__name__}")
    for what, got, want in (("shape", tuple(input.shape), tuple(static.shape)), ("dtype", input.dtype, static.dtype),
                            ("device", input.device, static.device)):
        if got != want:
            raise ValueError(f"{name}: expected {what} {want} (the captured {name}'s: capture again for another), "
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
    if not isinstance(copy_output, bool):
        raise TypeError(f"copy_output: expected a bool, got {type(copy_output).__name__}")
    device = _check_warmup_and_device(model, warmup, {"example_input": example_input})

    static_input = example_input.detach().clone()  # keeps the example's layout (preserve_format)
    autocast = _autocast(dtype)

    def forward():
        with torch.no_grad(), autocast:
            return model(static_input)

    graph, static_output = _capture(device, lambda: [forward() for _ in range(warmup)], forward)
    if not any(isinstance(t, torch.Tensor) for t in tree_flatten(static_output)[0]):
        raise TypeError(f"model: expected a forward that returns tensors, got {type(static_output).__name__}")
    return GraphedInference(model, graph, static_input, static_output, copy_output)


class GraphedTrainStep:
    """A captured training step (see :func:`graph_train_step`): ``step(input, target)`` copies the
    batch into the graph's buffers (``static_input``, ``static_target``), replays forward,
    backward and the optimizer's step, and returns a copy of the loss."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, graph, static_input: torch.Tensor,
                 static_target: torch.Tensor, static_loss: torch.Tensor) -> None:
        self.model = model
        self.optimizer = optimizer
        self.graph = graph
        self.static_input = static_input
        self.static_target = static_target
        self.static_loss = static_loss

    def __call__(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_like(input, self.static_input)
        _check_like(target, self.static_target, "target")
        self.static_input.copy_(input)
        self.static_target.copy_(target)
        self.graph.replay()
        return self.static_loss.detach().clone()

    def __repr__(self) -> str:
        s = self.static_input
        return (f"GraphedTrainStep({type(self.model).__name__}, {type(self.optimizer).__name__}, input "
                f"{tuple(s.shape)} {s.dtype} on {s.device})")


def _state_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor a training step changes in place: parameters, buffers (BatchNorm's running
    statistics and count) and the optimizer's state."""
    found = [*model.parameters(), *model.buffers()]
    for state in optimizer.state.values():
        found += [t for t in state.values() if isinstance(t, torch.Tensor)]
    return found


def run_and_restore(model: nn.Module, optimizer: torch.optim.Optimizer, step: Callable[[], object],
                    times: int) -> None:
    """Runs ``step()`` ``times`` times (real training steps, which create the optimizer's state and
    let every kernel compile and tune), then puts the model and the optimizer back as they were,
    in place (a graph captured afterwards reads these very tensors): parameters, buffers and the
    optimizer's state tensors that existed before get their values back; state tensors the steps
    created are zeroed, which is a fresh state for SGD without dampening and for Adam/AdamW (zero
    moments and step count). Gradients are set to None."""
    before = {id(t): t.detach().clone() for t in _state_tensors(model, optimizer)}
    for _ in range(times):
        step()
    with torch.no_grad():
        for t in _state_tensors(model, optimizer):
            saved = before.get(id(t))
            if saved is None:
                t.zero_()
            else:
                t.copy_(saved)
    optimizer.zero_grad(set_to_none=True)


def graph_train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                     loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], example_input: torch.Tensor,
                     example_target: torch.Tensor, *, dtype: torch.dtype | None = None,
                     warmup: int = 3) -> GraphedTrainStep:
    """Capture one training step, ``loss_fn(model(input), target)``, its backward and
    ``optimizer.step()`` (autocast to ``dtype`` if given: torch.bfloat16; None: none), in a CUDA
    graph, and return a :class:`GraphedTrainStep` that replays it on new batches of the example's
    shape, dtype and device.

    ``warmup`` real steps on the example batch run first on a side stream (torch.cuda.graph
    requires it: kernels compile and tune, the optimizer creates its state), and are then undone
    (:func:`run_and_restore`): the first replay is the model's first step from its current weights."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable (output, target) -> loss, got {type(loss_fn).__name__}")
    for name, t in (("example_input", example_input), ("example_target", example_target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    if dtype == torch.float16:
        raise ValueError("dtype: float16 training needs a GradScaler, which decides on the host whether to step "
                         "and so cannot be captured; use torch.bfloat16")
    if dtype is not None and dtype not in _AUTOCAST_DTYPES:
        raise TypeError(f"dtype: expected None (no autocast) or torch.bfloat16, got {dtype}")
    device = _check_warmup_and_device(model, warmup, {"example_input": example_input,
                                                      "example_target": example_target})
    owned = {id(p) for p in model.parameters()}
    if any(id(p) not in owned for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("optimizer: expected an optimizer over the model's parameters only")

    static_input = example_input.detach().clone()
    static_target = example_target.detach().clone()
    autocast = _autocast(dtype)

    def step():  # (captured after run_and_restore, whose gradients are None already: no kernel to zero them)
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(model(static_input), static_target)
        loss.backward()
        optimizer.step()
        return loss

    graph, static_loss = _capture(device, lambda: run_and_restore(model, optimizer, step, warmup), step)
    return GraphedTrainStep(model, optimizer, graph, static_input, static_target, static_loss)
