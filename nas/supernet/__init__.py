"""Weight-sharing supernets (``search: {mode: supernet}``): elastic MobileNet and CNN supernets
whose sub-networks are extracted as standalone models (``elastic``), trained once with the sandwich
rule and in-place distillation, checkpointed and resumable, with BatchNorm recalibration per
sub-network (``train``), a per-layer onnxruntime latency lookup table (``latency``), and the search
mode itself (``search``)."""

from nas.supernet.elastic import ElasticCNN, ElasticMobileNet, Stage

__all__ = ["ElasticCNN", "ElasticMobileNet", "Stage"]
