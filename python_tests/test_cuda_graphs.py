"""graph_inference (mobilenet_kernels/cuda_graphs.py): the argument checks and the replay wrapper on
any machine; the capture itself, of our models on each GPU backend and of torchvision's, on a GPU."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import mobilenet_kernels as mk
from mobilenet_kernels.cuda_graphs import GraphedInference

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
