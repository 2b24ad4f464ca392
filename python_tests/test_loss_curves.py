"""The loss-curve comparison behind benchmarks/loss_curves.py (issue 7's bf16 curves on a GPU): on
the CPU in float32, ours trains step for step like torchvision eager from the same weights, data and
dropout masks; and the "within noise" verdict rejects a curve that is off."""

from __future__ import annotations

import pytest

from mobilenet_kernels.benchmarking.loss_curves import CurveSettings, compare, run

from conftest import skip_unless_usable

pytest.importorskip("torchvision")


@pytest.mark.parametrize("backend", ["torch", "cuda"])
def test_ours_trains_like_eager_step_for_step(backend):
    skip_unless_usable(backend, "cpu")
    s = CurveSettings(model="mobilenet_v3_small", backends=(backend,), steps=6, batch=8, size=32, seeds=2,
                      dtype="float32", device="cpu")
    result = run(s)
    eager, ours = result["curves"]["eager"], result["curves"][f"ours[{backend}]"]
    assert len(eager) == len(ours) == 2 and all(len(c) == 6 for c in eager + ours)
    assert eager[0] != eager[1]  # the seeds differ: they are the noise
    for e, o in zip(eager, ours):
        assert o == pytest.approx(e, rel=1e-4)
    assert result["comparison"][f"ours[{backend}]"]["within_noise"]


def test_verdict_rejects_a_curve_outside_the_noise():
    eager = [[2.0 - 0.01 * t + 0.02 * seed for t in range(40)] for seed in range(3)]
    assert compare(eager, [list(c) for c in eager])["within_noise"]
    shifted = compare(eager, [[v + 0.1 for v in c] for c in eager])
    assert not shifted["within_noise"] and shifted["z"] > 2
    assert shifted["max_paired_gap"] > 4  # 0.1 over a seed-to-seed std of 0.02
