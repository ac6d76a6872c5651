"""Weight-sharing supernets (issue 10, in progress): an elastic MobileNet whose sub-networks are
extracted as standalone models (``elastic``), trained once with the sandwich rule and in-place
distillation, checkpointed and resumable, with BatchNorm recalibration per sub-network
(``train``), and a per-layer onnxruntime latency lookup table (``latency``).
``search: {mode: supernet}`` is still to come."""

from nas.supernet.elastic import ElasticMobileNet, Stage

__all__ = ["ElasticMobileNet", "Stage"]
