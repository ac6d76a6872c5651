"""Weight-sharing supernets (issue 10, in progress): an elastic MobileNet whose sub-networks are
extracted as standalone models. Supernet training and ``search: {mode: supernet}`` build on it."""

from nas.supernet.elastic import ElasticMobileNet, Stage

__all__ = ["ElasticMobileNet", "Stage"]
