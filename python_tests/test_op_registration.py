"""How the ops are registered with the dispatcher: every differentiable op, the C++-backed one and
its `_triton` twin alike, has its autograd in C++ (csrc/autograd.cpp: no Python runs per call
between an op and its kernels); the inference-only ops have none."""

import torch

import mobilenet_kernels  # noqa: F401  (registers the ops)

# The differentiable ops, without the `_triton` suffix; their `_backward` ops and the
# inference-only ops are not differentiable.
DIFFERENTIABLE = {"batch_norm_act_eval", "batch_norm_act_train", "depthwise_conv2d", "depthwise_conv2d_stats",
                  "depthwise_conv2d_bn_act_train", "pointwise_conv2d", "pointwise_conv2d_stats",
                  "pointwise_conv2d_bn_act_train", "pointwise_depthwise_bn_act_train", "squeeze_excite"}
INFERENCE_ONLY = {"inverted_residual_eval", "batch_norm_update_stats"}


def ops() -> list[str]:
    prefix = "mobilenet_kernels::"
    return sorted(n[len(prefix):] for n in torch._C._dispatch_get_all_op_names() if n.startswith(prefix))


def autograd_kernel(op: str) -> str | None:
    """The dispatcher's line for the op's Autograd kernel (where it was registered), or None."""
    for line in torch._C._dispatch_dump(f"mobilenet_kernels::{op}").splitlines():
        if line.startswith("Autograd"):
            return line
    return None


def test_every_op_is_accounted_for():
    """A new op is added to one of the sets above (and so to the test below)."""
    for op in ops():
        base = op.removesuffix("_triton")
        assert base.endswith("_backward") or base in DIFFERENTIABLE | INFERENCE_ONLY, op


def test_autograd_is_cpp_for_both_twins():
    names = set(ops())
    for base in DIFFERENTIABLE:
        for op in (base, f"{base}_triton"):
            assert op in names, op
            line = autograd_kernel(op)
            assert line is not None and "csrc/autograd.cpp" in line, f"{op}: {line}"
    for base in INFERENCE_ONLY:
        for op in names & {base, f"{base}_triton"}:
            assert autograd_kernel(op) is None, op
