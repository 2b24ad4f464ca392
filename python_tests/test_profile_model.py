"""benchmarks/profile_model.py (where a training step's time goes, issue 7) on the CPU: its JSON and
table, and the kernel-name categories it sums on a GPU, checked on real kernel names."""

from __future__ import annotations

import json

import pytest
import torch

from mobilenet_kernels.benchmarking.profile import category, short_name

from conftest import load_benchmark, skip_unless_usable

pytest.importorskip("torchvision")


def load_script():
    return load_benchmark("profile_model")


@pytest.mark.parametrize("name, expected", [
    ("void mobilenet_kernels::cuda::depthwise_conv2d_fwd_tiled_kernel<c10::BFloat16, float, 8, 3, 1, false>(...)",
     "ours: depthwise"),
    ("void mobilenet_kernels::cuda::pointwise_gemm_kernel<c10::BFloat16, 2>(...)", "ours: pointwise"),
    ("void mobilenet_kernels::(anonymous namespace)::per_channel_nhwc_kernel<c10::BFloat16, float, ...>(...)",
     "ours: batch norm"),
    ("void mobilenet_kernels::cuda::dw::depthwise_conv2d_bwd_weight_finish_kernel<float>(...)", "ours: depthwise"),
    ("void mobilenet_kernels::cuda::stats_finish_kernel<float>(...)", "ours: batch norm"),
    ("mobilenet_kernels::depthwise_conv2d_bn_act_train_backward", "ours: depthwise"),
    ("void mobilenet_kernels::(anonymous namespace)::squeeze_excite_reduce_nhwc_kernel<float>(...)",
     "ours: squeeze-excite"),
    ("void mobilenet_kernels::cuda::se::excite_gemm_kernel<float, mobilenet_kernels::cuda::se::ParamGrad<float> >(...)",
     "ours: squeeze-excite"),
    ("mobilenet_kernels::pointwise_conv2d_backward", "ours: pointwise"),
    ("void mobilenet_kernels::something_new_kernel(...)", "ours: other"),
    ("conv2d_c1_k1_nhwc_specialized", "cuDNN conv"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "cuDNN conv"),
    ("nvjet_tst_128x64_64x8_1x1_v_bz_TNT", "GEMM"),
    ("void at::native::batch_norm_collect_statistics_channels_last_kernel<float, float, float, 4>(...)",
     "batch norm (ATen)"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, ...>(...)", "elementwise"),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(...)>(...)",
     "copies, casts, fills"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...>(...)", "optimizer"),
    ("triton_poi_fused_add_hardswish_0", "triton"),
    ("some_other_kernel", "other"),
])
def test_kernel_categories(name, expected):
    assert category(name) == expected
    assert "mobilenet_kernels::" not in short_name(name) and len(short_name(name, 40)) <= 40


def test_profile_model_on_cpu(tmp_path, capsys):
    skip_unless_usable("cuda", "cpu")
    script = load_script()
    rc = script.main([str(tmp_path), "--device", "cpu", "--batch", "2", "--size", "32", "--dtype", "float32",
                      "--backends", "cuda", "--steps", "1", "--name", "prof"])
    assert rc == 0
    record = json.loads((tmp_path / "prof.json").read_text())
    assert record["op"] == "model_profile" and record["settings"]["model"] == "mobilenet_v3_large"
    eager, ours = record["rows"]
    assert (eager["variant"], ours["variant"]) == ("torchvision", "ours[cuda]")
    for row in (eager, ours):
        assert row["wall_ms"] > 0 and row["launches"] > 0 and row["host_ms"] is None  # host_ms: CUDA only
        assert sum(row["categories_ms"].values()) == pytest.approx(row["work_ms"])
        ms = [t["ms"] for t in row["top"]]
        assert ms == sorted(ms, reverse=True) and 0 < len(ms) <= 20
        host = [t["ms"] for t in row["top_host"]]
        assert host == sorted(host, reverse=True) and 0 < len(host) <= 20
        assert 0 < sum(host) <= row["host_in_ops_ms"] + 1e-9 and all(t["calls"] > 0 for t in row["top_host"])
    assert "ours: depthwise" in ours["categories_ms"] and "cuDNN conv" in eager["categories_ms"]
    for row in (eager, ours):
        mem = row["memory"]
        held = [e["mb"] for e in mem["at_peak"]]
        assert mem["allocator_peak_mb"] is None  # CUDA only
        assert held == sorted(held, reverse=True) and 0 < sum(held) <= mem["tensor_peak_mb"] + 1e-9
        assert mem["peak_during"]["phase"] in ("forward", "backward")
    assert any(e["name"].startswith("mobilenet_kernels::") for e in ours["top_host"])
    assert not any(e["name"].startswith("mobilenet_kernels::") for e in eager["top_host"])
    assert any(e["op"].startswith("mobilenet_kernels.") for e in ours["memory"]["at_peak"])
    assert any(e["op"] == "aten.convolution" for e in eager["memory"]["at_peak"])
    table = (tmp_path / "prof.md").read_text()
    assert "| ours[cuda] |" in table and table in capsys.readouterr().out


def test_profile_model_inference_on_cpu(tmp_path):
    """--mode infer profiles an eval-mode inference under no_grad: no backward ops, no optimizer."""
    skip_unless_usable("cuda", "cpu")
    rc = load_script().main([str(tmp_path), "--device", "cpu", "--batch", "1", "--size", "32", "--dtype", "float32",
                             "--backends", "cuda", "--steps", "1", "--name", "prof", "--mode", "infer"])
    assert rc == 0
    record = json.loads((tmp_path / "prof.json").read_text())
    assert record["settings"]["mode"] == "infer"
    eager, ours = record["rows"]
    for row in (eager, ours):
        assert row["mode"] == "infer" and row["wall_ms"] > 0 and row["launches"] > 0
        assert "optimizer" not in row["categories_ms"]
        assert row["memory"]["peak_during"]["phase"] == "forward"
        assert not any("backward" in t["name"].lower() for t in row["top_host"])
    assert any(e["name"].startswith("mobilenet_kernels::") for e in ours["top_host"])


@pytest.mark.parametrize("args, message", [
    (["--batch", "1"], "--batch: training needs at least 2 images"),
    (["--batch", "0", "--mode", "infer"], "--batch: at least 1"),
    (["--size", "16"], "--size: at least 32"),
    (["--steps", "0"], "--steps: must be positive"),
    (["--model", "resnet50"], "invalid choice"),
])
def test_profile_model_bad_arguments(tmp_path, args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        load_script().main([str(tmp_path), "--device", "cpu", *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_live_memory_counts_what_is_alive_at_the_peak():
    """LiveMemory: the peak of the storage allocated in the region and alive at once, attributed to
    the op that returned it; views and in-place ops allocate nothing, freed storage is subtracted,
    and the autograd engine's ops count as backward."""
    from mobilenet_kernels.benchmarking.profile import LiveMemory

    x = torch.ones(1024, requires_grad=True)  # 4 KiB each; allocated before the region: not counted
    w = torch.ones(1024)
    with LiveMemory() as mem:
        w.mul_(2)                  # in place: nothing allocated
        a = x * 2                  # 4 KiB
        view = a[:512]             # a view: the same storage
        tmp = w + 1                # 4 KiB, freed below
        del tmp
        b = torch.stack([a, a])    # 8 KiB: the forward's peak, 12 KiB (a, b)
        forward = mem.summary()
        (b.sum() + view.sum()).backward()
    assert forward["tensor_peak_mb"] * 1024 == pytest.approx(12)
    assert forward["peak_during"] == {"phase": "forward", "op": "aten.stack"}
    held = {(e["phase"], e["op"]): e["mb"] * 1024 for e in forward["at_peak"]}
    assert held == {("forward", "aten.mul"): pytest.approx(4), ("forward", "aten.stack"): pytest.approx(8)}
    after = {(e["phase"], e["op"]) for e in mem.summary()["at_peak"]}
    assert any(phase == "backward" for phase, _ in after)  # the backward's buffers raised the peak
    assert x.grad is not None and mem.current < mem.peak
