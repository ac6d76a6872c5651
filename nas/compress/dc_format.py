"""The ``model.dc`` file of Deep Compression (Han et al. 2016): pruned, shared, Huffman-coded.

For every Linear / conv weight that is pruned and shared (``sparse_ops``): the positions of its
non-zero weights as gaps between consecutive positions and their cluster indices, each stream
Huffman-coded (canonical codes, one table per layer), and the layer's codebook (float32). Every
other tensor (biases, BatchNorm, unshared weights) is stored raw (float32). The file::

    b"NASDC1" | u32 header length | header (JSON: names, shapes, counts) | crc32 |
    bit stream | per coded layer: codebook (f32), gap and index tables (i32 symbol, u8 length) |
    raw tensors

:func:`decode` rebuilds the exact float32 weights (``codebook[index]`` at the stored positions,
zero elsewhere) into a model of the same architecture; a truncated or corrupt file (magic, length,
CRC) raises :class:`DCFormatError` instead of producing a wrong model. The file's size is what the
``size_bytes`` objective reports for a Deep Compression model.
"""

from __future__ import annotations

import heapq
import json
import struct
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.errors import NasError

MAGIC = b"NASDC1"

__all__ = ["DCFormatError", "decode", "encode", "huffman_lengths"]


class DCFormatError(NasError):
    """A ``.dc`` file that is not one, is truncated, or fails its checksum."""


def huffman_lengths(symbols: Sequence[int]) -> dict[int, int]:
    """Code length per symbol of a Huffman code for the symbols' frequencies."""
    freq = Counter(symbols)
    if len(freq) == 1:
        return {next(iter(freq)): 1}
    heap = [(n, i, [s]) for i, (s, n) in enumerate(sorted(freq.items()))]
    heapq.heapify(heap)
    lengths = dict.fromkeys(freq, 0)
    tie = len(heap)
    while len(heap) > 1:
        n1, _, s1 = heapq.heappop(heap)
        n2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (n1 + n2, tie, s1 + s2))
        tie += 1
    return lengths


def _canonical(lengths: dict[int, int]) -> dict[int, tuple[int, int]]:
    """symbol -> (code, length), canonical order (length, symbol)."""
    codes, code, prev = {}, 0, 0
    for s, n in sorted(lengths.items(), key=lambda kv: (kv[1], kv[0])):
        code <<= n - prev
        codes[s] = (code, n)
        code, prev = code + 1, n
    return codes


def _encode_stream(symbols: Sequence[int]) -> tuple[str, dict[int, int]]:
    if not symbols:
        return "", {}
    lengths = huffman_lengths(symbols)
    codes = _canonical(lengths)
    return "".join(format(codes[s][0], f"0{codes[s][1]}b") for s in symbols), lengths


def _decode_stream(bits: str, pos: int, count: int, lengths: dict[int, int]) -> tuple[list, int]:
    table = {(n, c): s for s, (c, n) in _canonical(lengths).items()}
    out, code, n = [], 0, 0
    while len(out) < count:
        if pos >= len(bits):
            raise DCFormatError("the .dc bit stream ends early; the file is truncated")
        code, n = (code << 1) | (bits[pos] == "1"), n + 1
        pos += 1
        s = table.get((n, code))
        if s is not None:
            out.append(s)
            code, n = 0, 0
        elif n > 64:
            raise DCFormatError("the .dc bit stream holds an invalid code; the file is corrupt")
    return out, pos


def _pack_table(lengths: dict[int, int]) -> bytes:
    items = sorted(lengths.items())
    return struct.pack(
        f"<{len(items)}i{len(items)}B", *[k for k, _ in items], *[v for _, v in items]
    )


def _unpack_table(buf: memoryview, n: int) -> tuple[dict[int, int], memoryview]:
    size = 5 * n
    if len(buf) < size:
        raise DCFormatError("the .dc tables end early; the file is truncated")
    vals = struct.unpack_from(f"<{n}i{n}B", buf)
    return dict(zip(vals[:n], vals[n:], strict=True)), buf[size:]


def encode(model: nn.Module) -> bytes:
    """The ``.dc`` bytes of a model whose shared layers are baked (``weight_codebook_bits``)."""
    layers, bits, tables, raw = [], [], [], []
    shared = {
        n for n, m in model.named_modules() if getattr(m, "weight_codebook_bits", None) is not None
    }
    for name, t in model.state_dict().items():
        layer = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and layer in shared:
            w = t.detach().float().flatten()
            pos = torch.nonzero(w, as_tuple=True)[0]
            codebook = torch.unique(w[pos])
            index = torch.searchsorted(codebook, w[pos]).tolist()
            gaps = torch.diff(pos, prepend=torch.tensor([-1])).tolist()
            g_bits, g_len = _encode_stream(gaps)
            i_bits, i_len = _encode_stream(index)
            bits += [g_bits, i_bits]
            tables += [
                codebook.numpy().astype("<f4").tobytes(),
                _pack_table(g_len),
                _pack_table(i_len),
            ]
            layers.append([name, list(t.shape), len(pos), len(codebook), len(g_len), len(i_len)])
        else:
            arr = t.detach().cpu().numpy()
            raw.append(arr.astype("<f4").tobytes() if arr.dtype.kind == "f" else arr.tobytes())
            layers.append([name, list(t.shape), str(arr.dtype)])
    stream = "".join(bits)
    pad = (8 - len(stream) % 8) % 8
    payload = (
        int(stream + "0" * pad, 2).to_bytes((len(stream) + pad) // 8, "big") if stream else b""
    )
    body = payload + b"".join(tables) + b"".join(raw)
    header = json.dumps(
        {"layers": layers, "bits": len(stream), "payload": len(payload)}, separators=(",", ":")
    ).encode()
    return (
        MAGIC + struct.pack("<I", len(header)) + header + struct.pack("<I", zlib.crc32(body)) + body
    )


def decode(data: bytes, model: nn.Module) -> nn.Module:
    """Load the tensors of ``data`` into ``model`` (same architecture) and return it."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise DCFormatError("not a .dc file (bad magic); pass a model.dc written by nas export")
    (n,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header: dict[str, Any] = json.loads(data[start : start + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DCFormatError(
            "the .dc header is unreadable; the file is truncated or corrupt"
        ) from None
    (crc,) = struct.unpack_from("<I", data, start + n) if len(data) >= start + n + 4 else (None,)
    body = data[start + n + 4 :]
    if crc is None or zlib.crc32(body) != crc:
        raise DCFormatError("the .dc file fails its checksum; it is truncated or corrupt")
    payload = body[: header["payload"]]
    stream = bin(int.from_bytes(payload, "big"))[2:].zfill(len(payload) * 8)[: header["bits"]]
    rest, pos, state = memoryview(body)[header["payload"] :], 0, {}
    coded = [layer for layer in header["layers"] if len(layer) == 6]
    books = {}
    for name, _, _, k, ng, ni in coded:  # the tables come first, in layer order
        if len(rest) < 4 * k:
            raise DCFormatError("the .dc tables end early; the file is truncated")
        books[name] = torch.from_numpy(np.frombuffer(rest[: 4 * k], "<f4").copy())
        g_len, rest = _unpack_table(rest[4 * k :], ng)
        i_len, rest = _unpack_table(rest, ni)
        books[name] = (books[name], g_len, i_len)
    for layer in header["layers"]:
        name, shape = layer[0], layer[1]
        size = int(np.prod(shape)) if shape else 1
        if len(layer) == 3:
            dtype = np.dtype(layer[2])
            dtype = np.dtype("<f4") if dtype.kind == "f" else dtype
            nbytes = size * dtype.itemsize
            if len(rest) < nbytes:
                raise DCFormatError("the .dc file ends early; it is truncated")
            arr = np.frombuffer(rest[:nbytes], dtype=dtype).reshape(shape).copy()
            rest = rest[nbytes:]
            state[name] = torch.from_numpy(arr)
            continue
        codebook, g_len, i_len = books[name]
        gaps, pos = _decode_stream(stream, pos, layer[2], g_len)
        index, pos = _decode_stream(stream, pos, layer[2], i_len)
        w = torch.zeros(size)
        where = torch.tensor(np.cumsum(gaps) - 1 if gaps else [], dtype=torch.long)
        w[where] = codebook[torch.tensor(index, dtype=torch.long)]
        state[name] = w.reshape(shape)
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise DCFormatError(
            f"the .dc file lacks {sorted(missing)[:3]}; it was written for another architecture"
        )
    model.load_state_dict(state)
    return model.eval()
