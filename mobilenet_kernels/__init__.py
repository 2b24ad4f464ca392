"""mobilenet_kernels: fused Triton, CUDA and C++ kernels for MobileNet V1/V2/V3.

    import mobilenet_kernels as mk
    model = mk.mobilenet_v3_large()                 # torchvision-compatible state_dict
    model = mk.convert(torchvision_model)           # or swap our kernels into an existing model
    run = mk.graph_inference(model.cuda().eval(), example)  # batch-1 inference from a CUDA graph
    y = mk.functional.batch_norm_act(x, mean, var, w, b, False, 0.1, 1e-5, "hardswish", backend="triton")
"""

from . import backends, functional, nn, ops  # noqa: F401
from .convert import convert
from .cuda_graphs import GraphedInference, GraphedTrainStep, graph_inference, graph_train_step
from .models import mobilenet_v1, mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small
from .version import __version__

__all__ = [
    "backends",
    "convert",
    "GraphedInference",
    "GraphedTrainStep",
    "graph_inference",
    "graph_train_step",
    "functional",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "nn",
    "__version__",
]
