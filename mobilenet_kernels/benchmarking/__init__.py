"""The benchmarks, as part of the package: ``python -m mobilenet_kernels bench ops|model`` and
``report`` run them, and so do the scripts in benchmarks/ (the GPU suite's entry points).

- ``core``: timing (do_bench on CUDA, torch.utils.benchmark on CPU), the environment record,
  JSON + markdown results, the shared main ``execute``.
- ``shapes``: the layer shapes of the MobileNets, read off torchvision's models.
- ``ops``: the registry of per-op sweeps (one entry per op) and their summaries;
  ``batch_norm_act``, ``depthwise_conv2d``: the sweeps (providers, one case's inputs and calls).
- ``models``: whole-model training and inference steps, torchvision against ours.
- ``report``: tables and plots from result files.

Importing this package needs torch only; torchvision (shapes, baselines), tqdm (progress) and
matplotlib (plots) are imported where used.
"""
