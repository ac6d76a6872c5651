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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.supernet.elastic import ElasticMobileNet


class LatencyTable:
    """Measured piece latencies (ms) by key, filled on demand and cached at ``path``.

    Each piece is timed as a whole onnxruntime call, which includes the call's fixed cost (input
    and output copies, session dispatch); a sub-network is one call, so its prediction counts
    that cost once: the sum of its pieces minus ``overhead`` (an empty model's time) for every
    piece but the first."""

    def __init__(self, path: Path | None = None, batch_size: int = 1, repeats: int = 50) -> None:
        self.path = path
        self.batch_size = batch_size
        self.repeats = repeats
        self.machine = f"{platform.machine()}, {os.cpu_count()} cpus, {platform.node()}"
        self.entries: dict[str, float] = {}
        self.overhead: float | None = None
        if path is not None and path.is_file():
            data = json.loads(path.read_text())
            if data.get("machine") == self.machine and data.get("batch_size") == batch_size:
                self.entries = data["entries"]
                self.overhead = data.get("overhead_ms")

    def _overhead(self, shape: tuple) -> float:
        if self.overhead is None:
            self.overhead = measure(_Empty(), shape, self.batch_size, self.repeats)
        return self.overhead

    def fill(self, net: ElasticMobileNet, announce: Callable[[str], None] | None = None) -> int:
        """Measure every piece any sub-network of ``net`` can hold (once per machine); return
        how many were measured now."""
        todo = [k for k in net.piece_keys() if k not in self.entries]
        for n, key in enumerate(todo, 1):
            module, shape = net.piece(key)
            self.entries[key] = measure(module.eval(), shape, self.batch_size, self.repeats)
            if n % 50 == 0 or n == len(todo):
                self.save()
                if announce is not None:
                    announce(f"latency table: {n}/{len(todo)} pieces timed")
        return len(todo)

    def predict(self, net: ElasticMobileNet, config: Mapping[str, Any]) -> float:
        """Predicted latency (ms) of sub-network ``config``: its measured pieces, summed, with
        the per-call cost counted once."""
        total, n, new = 0.0, 0, False
        for key, module, shape in net.pieces(config):
            if key not in self.entries:
                self.entries[key] = measure(module.eval(), shape, self.batch_size, self.repeats)
                new = True
            total += self.entries[key]
            n += 1
        overhead = self._overhead(tuple(net.spec["input_shape"]))
        if new:
            self.save()
        return total - (n - 1) * overhead

    def save(self) -> None:
        if self.path is None:
            return
        data = {
            "machine": self.machine,
            "batch_size": self.batch_size,
            "overhead_ms": self.overhead,
            "entries": self.entries,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


class _Empty(nn.Module):
    """The smallest model onnxruntime runs: what a call costs without any work."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.0


def measure(module: nn.Module, shape: tuple, batch_size: int = 1, repeats: int = 50) -> float:
    """Latency (ms) of ``module`` exported to ONNX: onnxruntime, 1 thread, warmed up, median."""
    import nas.onnx_utils as onnx_utils

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = Path(tmp) / "piece.onnx"
        onnx_utils.to_onnx(module, tuple(shape), path)
        sess = onnx_utils.session(path, threads=1)
        return onnx_utils.time_ms(sess, tuple(shape), batch_size, repeats=repeats)
