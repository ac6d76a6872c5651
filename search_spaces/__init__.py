"""Built-in architecture spaces, one file each; :mod:`nas.space` registers them by name."""

from __future__ import annotations

from search_spaces.cnn import cnn
from search_spaces.elastic import elastic_cnn, elastic_mobilenet
from search_spaces.mlp import mlp
from search_spaces.mobilenet import mobilenet
from search_spaces.pretrained import pretrained
from search_spaces.vit import vit
from search_spaces.zoo import timm_space, torchvision_space

BUILTIN_SPACES = {
    "cnn": cnn,
    "mobilenet": mobilenet,
    "elastic_mobilenet": elastic_mobilenet,
    "elastic_cnn": elastic_cnn,
    "mlp": mlp,
    "vit": vit,
    "pretrained": pretrained,
    "torchvision": torchvision_space,
    "timm": timm_space,
}
# spaces that need args (the model's name) or a model: the registry-wide tests leave them out
MODEL_ZOO = ("pretrained", "torchvision", "timm")

__all__ = [
    "BUILTIN_SPACES",
    "MODEL_ZOO",
    "cnn",
    "elastic_cnn",
    "elastic_mobilenet",
    "mlp",
    "mobilenet",
    "pretrained",
    "timm_space",
    "torchvision_space",
    "vit",
]
