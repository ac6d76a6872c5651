"""Search drivers. Public: :func:`optimize` (local workers), :class:`SearchSettings`,
:class:`Problem`, :class:`Point`, :func:`make_sampler`."""

from __future__ import annotations

from nas.search._fidelity import MOASHA, Reporter, Stopped
from nas.search._local import SearchSettings, optimize
from nas.search._problem import Point, Problem, Rejected
from nas.search._samplers import SAMPLERS, make_sampler
from nas.search._storage import open_storage, redact

__all__ = [
    "MOASHA",
    "SAMPLERS",
    "Point",
    "Problem",
    "Rejected",
    "Reporter",
    "SearchSettings",
    "Stopped",
    "make_sampler",
    "open_storage",
    "optimize",
    "redact",
]
