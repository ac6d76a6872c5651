"""A per-layer latency lookup table for the supernet's sub-networks (OFA's latency predictor).

Each distinct piece a sub-network is made of (:meth:`ElasticMobileNet.pieces`: the stem, a block
with its input width, output width, expansion, kernel, stride and input size, the head with the
classifier) is exported on
its own to ONNX and timed once with onnxruntime (1 thread, batch 1 by default, warmed up, median
of repeats). A sub-network's predicted latency is the sum of its pieces; the table is cached as
JSON (in the run folder) so it is measured once per machine.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.supernet.elastic import ElasticMobileNet


class LatencyTable:
    """Measured piece latencies (ms) by key, filled on demand and cached at ``path``."""

    def __init__(self, path: Path | None = None, batch_size: int = 1, repeats: int = 50) -> None:
        self.path = path
        self.batch_size = batch_size
        self.repeats = repeats
        self.machine = f"{platform.machine()}, {os.cpu_count()} cpus, {platform.node()}"
        self.entries: dict[str, float] = {}
        if path is not None and path.is_file():
            data = json.loads(path.read_text())
            if data.get("machine") == self.machine and data.get("batch_size") == batch_size:
                self.entries = data["entries"]

    def predict(self, net: ElasticMobileNet, config: Mapping[str, Any]) -> float:
        """Predicted latency (ms) of sub-network ``config``: the sum of its measured pieces."""
        total, new = 0.0, False
        for key, module, shape in net.pieces(config):
            if key not in self.entries:
                self.entries[key] = measure(module.eval(), shape, self.batch_size, self.repeats)
                new = True
            total += self.entries[key]
        if new:
            self.save()
        return total

    def save(self) -> None:
        if self.path is None:
            return
        data = {"machine": self.machine, "batch_size": self.batch_size, "entries": self.entries}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def measure(module: nn.Module, shape: tuple, batch_size: int = 1, repeats: int = 50) -> float:
    """Latency (ms) of ``module`` exported to ONNX: onnxruntime, 1 thread, warmed up, median."""
    from nas import onnx_utils

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = Path(tmp) / "piece.onnx"
        onnx_utils.to_onnx(module, tuple(shape), path)
        sess = onnx_utils.session(path, threads=1)
        return onnx_utils.time_ms(sess, tuple(shape), batch_size, repeats=repeats)
