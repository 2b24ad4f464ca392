"""graph_inference (mobilenet_kernels/cuda_graphs.py): the argument checks and the replay wrapper on
any machine; the capture itself, of our models on each GPU backend and of torchvision's, on a GPU."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import mobilenet_kernels as mk
from mobilenet_kernels.cuda_graphs import GraphedInference, GraphedTrainStep

from conftest import skip_unless_usable
from model_helpers import randomize_bn_parameters


def _eval_model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()


@pytest.mark.parametrize(
    "make_args, error, match",
    [
        (lambda: ("not a module", torch.zeros(1, 3, 8, 8)), TypeError, r"^model: expected an nn\.Module"),
        (lambda: (_eval_model().train(), torch.zeros(1, 3, 8, 8)), ValueError, r"^model: expected eval mode"),
        (lambda: (_eval_model(), [1, 2]), TypeError, r"^example_input: expected a tensor"),
        (lambda: (_eval_model(), torch.zeros(1, 3, 8, 8), {"dtype": torch.float32}), TypeError, r"^dtype: expected"),
        (lambda: (_eval_model(), torch.zeros(1, 3, 8, 8), {"warmup": 0}), ValueError, r"^warmup: expected an int >= 1"),
        (lambda: (_eval_model(), torch.zeros(1, 3, 8, 8), {"warmup": True}), ValueError, r"^warmup: expected"),
        (lambda: (_eval_model(), torch.zeros(1, 3, 8, 8), {"copy_output": 1}), TypeError, r"^copy_output: expected"),
        (lambda: (_eval_model(), torch.zeros(1, 3, 8, 8)), ValueError, r"^example_input: CUDA graphs need a CUDA"),
    ],
    ids=["model-type", "train-mode", "input-type", "dtype", "warmup-0", "warmup-bool", "copy-output", "cpu-input"],
)
def test_bad_arguments(make_args, error, match):
    model, example, *kwargs = make_args()
    with pytest.raises(error, match=match):
        mk.graph_inference(model, example, **(kwargs[0] if kwargs else {}))


class _HostGraph:
    """A stand-in for torch.cuda.CUDAGraph on a CPU box: replay() runs the captured forward again,
    reading the static input and writing the static output in place, as a replay does."""

    def __init__(self, model, static_input, static_output):
        self.model, self.static_input, self.static_output, self.replays = model, static_input, static_output, 0

    def replay(self):
        self.static_output.copy_(self.model(self.static_input))
        self.replays += 1


@pytest.mark.parametrize("copy_output", [True, False])
def test_replay_wrapper_copies_input_and_output(copy_output):
    """A call copies the input into the graph's buffer (any layout), replays once and returns a copy
    of the output buffer (copy_output) or the buffer itself."""
    torch.manual_seed(0)
    model = _eval_model()
    static_input = torch.zeros(2, 3, 8, 8)
    with torch.no_grad():
        static_output = model(static_input)
        graph = _HostGraph(model, static_input, static_output)
        run = GraphedInference(model, graph, static_input, static_output, copy_output)
        x1 = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
        y1 = run(x1)
        torch.testing.assert_close(y1, model(x1))
        x2 = torch.randn(2, 3, 8, 8)
        y2 = run(x2)
    assert graph.replays == 2
    torch.testing.assert_close(y2, model(x2))
    if copy_output:
        assert y1.data_ptr() != static_output.data_ptr()
        torch.testing.assert_close(y1, model(x1))  # earlier results stay valid
    else:
        assert y1 is static_output and y2 is static_output
    assert "copy_output=" in repr(run)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.zeros(1, 3, 8, 8), r"^input: expected shape \(2, 3, 8, 8\)"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.float64), r"^input: expected dtype torch\.float32"),
        ("an image", r"^input: expected a tensor"),
    ],
    ids=["shape", "dtype", "type"],
)
def test_replay_wrapper_rejects_other_inputs(x, match):
    model = _eval_model()
    static_input = torch.zeros(2, 3, 8, 8)
    with torch.no_grad():
        static_output = model(static_input)
    run = GraphedInference(model, _HostGraph(model, static_input, static_output), static_input, static_output, True)
    with pytest.raises(TypeError if isinstance(x, str) else ValueError, match=match):
        run(x)
    assert run.graph.replays == 0


@pytest.mark.gpu_suite
@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_large"])
@pytest.mark.parametrize("impl", ["cuda", "triton", "torchvision"])
def test_graph_inference_matches_eager(arch, impl):
    """Batch-1 bf16 inference from graph_inference equals the eager forward on new inputs, for our
    models on each GPU backend and for torchvision's; a call with another shape is refused."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(0)
    if impl == "torchvision":
        model = getattr(torchvision.models, arch)()
    else:
        skip_unless_usable(impl, "cuda")
        model = getattr(mk, arch)(backend=impl)
    randomize_bn_parameters(model)
    model = model.cuda().eval().to(memory_format=torch.channels_last)
    example = torch.randn(1, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    run = mk.graph_inference(model, example, dtype=torch.bfloat16)
    outputs = []
    for _ in range(2):
        x = torch.randn_like(example)
        y = run(x)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            torch.testing.assert_close(y, model(x))  # a stale or wrong replay is far off
        outputs.append(y)
    assert not torch.equal(outputs[0], outputs[1])  # copies: the first call's result was not overwritten
    with pytest.raises(ValueError, match=r"^input: expected shape \(1, 3, 224, 224\)"):
        run(torch.randn(2, 3, 224, 224, device="cuda"))


# ----------------------------------------------------------------------------- training steps


def _train_setup(seed=0, momentum=0.9, optimizer="sgd"):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    return model, opt, x, y


def _eager_step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach()


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_warmup_steps_are_undone(optimizer):
    """run_and_restore runs real steps, then gives back the parameters, the BatchNorm buffers and a
    fresh optimizer state, in place: the steps after it are those of an untouched model."""
    from mobilenet_kernels.cuda_graphs import run_and_restore

    model, opt, x, y = _train_setup(optimizer=optimizer)
    ref_model, ref_opt, _, _ = _train_setup(optimizer=optimizer)
    tensors = [*model.parameters(), *model.buffers()]
    run_and_restore(model, opt, lambda: _eager_step(model, opt, torch.randn_like(x), y), 3)
    assert all(a is b for a, b in zip(tensors, [*model.parameters(), *model.buffers()]))  # the same tensors
    for a, b in zip([*model.parameters(), *model.buffers()], [*ref_model.parameters(), *ref_model.buffers()]):
        assert torch.equal(a, b)
    assert all(p.grad is None for p in model.parameters())
    state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    assert state and all(not t.any() for t in state)  # created by the warm-up, zeroed
    for _ in range(2):
        torch.testing.assert_close(_eager_step(model, opt, x, y), _eager_step(ref_model, ref_opt, x, y))
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b)


def test_train_step_wrapper_copies_the_batch_and_returns_the_loss():
    """GraphedTrainStep with a host stand-in for the graph (a replay runs the step): each call
    copies the batch into the graph's buffers and returns a copy of that step's loss."""
    model, opt, x, y = _train_setup()
    ref_model, ref_opt, _, _ = _train_setup()
    static_x, static_y = torch.zeros_like(x), torch.zeros_like(y)
    static_loss = torch.zeros(())

    class Graph:
        def replay(self):
            static_loss.copy_(_eager_step(model, opt, static_x, static_y))

    run = GraphedTrainStep(model, opt, Graph(), static_x, static_y, static_loss)
    losses = [run(x, y), run(x * 2, y)]
    assert losses[0] is not static_loss and not torch.equal(losses[0], losses[1])
    torch.testing.assert_close(losses[0], _eager_step(ref_model, ref_opt, x, y))
    torch.testing.assert_close(losses[1], _eager_step(ref_model, ref_opt, x * 2, y))
    with pytest.raises(ValueError, match=r"^target: expected shape \(4,\)"):
        run(x, y[:2])
    with pytest.raises(ValueError, match=r"^input: expected dtype torch\.float32"):
        run(x.double(), y)
    assert "GraphedTrainStep(Sequential, SGD" in repr(run)


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"model": "a model"}, TypeError, r"^model: expected an nn\.Module"),
        ({"optimizer": "sgd"}, TypeError, r"^optimizer: expected a torch\.optim\.Optimizer"),
        ({"loss_fn": 3}, TypeError, r"^loss_fn: expected a callable"),
        ({"example_target": [1, 2]}, TypeError, r"^example_target: expected a tensor"),
        ({"dtype": torch.float16}, ValueError, r"^dtype: float16 training needs a GradScaler"),
        ({"dtype": torch.float32}, TypeError, r"^dtype: expected None"),
        ({"warmup": 0}, ValueError, r"^warmup: expected an int >= 1"),
        ({}, ValueError, r"^example_input: CUDA graphs need a CUDA tensor"),
    ],
    ids=["model", "optimizer", "loss-fn", "target", "float16", "float32", "warmup", "cpu"],
)
def test_graph_train_step_bad_arguments(change, error, match):
    model, opt, x, y = _train_setup()
    args = {"model": model, "optimizer": opt, "loss_fn": nn.functional.cross_entropy, "example_input": x,
            "example_target": y, **change}
    kwargs = {k: args.pop(k) for k in ("dtype", "warmup") if k in args}
    with pytest.raises(error, match=match):
        mk.graph_train_step(*args.values(), **kwargs)


@pytest.mark.gpu_suite
@pytest.mark.parametrize("impl", ["cuda", "triton", "torchvision"])
def test_graph_train_step_matches_eager_steps(impl):
    """Three bf16 training steps of V3-Small replayed from graph_train_step give the losses and
    weights of three eager steps from the same start (the same kernels, launched by the graph)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if impl != "torchvision":
        skip_unless_usable(impl, "cuda")

    def setup():
        torch.manual_seed(0)
        model = (torchvision.models.mobilenet_v3_small() if impl == "torchvision"
                 else mk.mobilenet_v3_small(backend=impl))
        model = model.cuda().train().to(memory_format=torch.channels_last)
        return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    torch.manual_seed(1)
    batches = [(torch.randn(8, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last),
                torch.randint(0, 1000, (8,), device="cuda")) for _ in range(3)]
    model, opt = setup()
    step = mk.graph_train_step(model, opt, nn.functional.cross_entropy, *batches[0], dtype=torch.bfloat16)
    graphed = [step(x, y) for x, y in batches]
    ref_model, ref_opt = setup()
    eager = []
    for x, y in batches:
        ref_opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(ref_model(x), y)
        loss.backward()
        ref_opt.step()
        eager.append(loss.detach())
    torch.testing.assert_close(torch.stack(graphed), torch.stack(eager), rtol=2e-2, atol=2e-2)
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_captures_autocast_without_its_weight_cache():
    """The helpers' autocast has the weight cache off: a cast cached in the warm-up would be read by
    the graph after the cache freed it (on a CUDA box: wrong logits on replay)."""
    import contextlib

    from mobilenet_kernels.cuda_graphs import _autocast

    with pytest.warns(UserWarning) if not torch.cuda.is_available() else contextlib.nullcontext():
        ctx = _autocast(torch.bfloat16)  # (without CUDA, torch warns and turns it off: its settings stay)
    assert isinstance(ctx, torch.autocast) and (ctx.device, ctx.fast_dtype) == ("cuda", torch.bfloat16)
    assert ctx._cache_enabled is False
    assert isinstance(_autocast(None), contextlib.nullcontext)
