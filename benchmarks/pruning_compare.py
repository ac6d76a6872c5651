"""Structural pruning: nas's pruners (on Torch-Pruning's DepGraph) against Torch-Pruning's own.

    python benchmarks/pruning_compare.py [--ratios 0.3 0.5] [--models resnet18 vit_tiny]
                                         [--rounds 15]

Four networks, random init (seed 0), 10 classes, 3x32x32 inputs: torchvision resnet18 with a CIFAR
stem (3x3 stride-1 conv, no max-pool), mobilenet_v2 and efficientnet_b0 with a stride-1 first
conv, and timm ``vit_tiny_patch16_224`` built with ``img_size=32, patch_size=4``. BatchNorm
gammas / betas are drawn at random and the running statistics set by a few training-mode passes
on random data, so magnitude criteria have no ties. Each network is pruned at each ratio by

- ``slim``: ``nas.compress.slimming_ops.slim(model, ratio, (3, 32, 32), round_to=8)`` (technique
  ``slimming``), one global |gamma| threshold over the slimmable channel groups;
- ``filter_pruning``: ``nas.compress.filter_pruning_ops.prune_filters(..., criterion="l1",
  round_to=8)`` (technique ``filter_pruning``), one global L1 ranking over the prunable groups;
- ``torch-pruning``: ``tp.pruner.MagnitudePruner`` (DepGraph, ``MagnitudeImportance`` = L2 group
  norm, ``pruning_ratio`` per group, the classifier in ``ignored_layers``, ``round_to=8``); on the
  ViT with ``num_heads`` (every ``attn.qkv``), ``prune_num_heads=True``, ``prune_head_dims=False``
  and ``head_pruning_ratio`` = the ratio, as Torch-Pruning's timm ViT example does.

Measured per row: whether the method prunes the model (else the refusal), the share of
conv / Linear output channels in the groups it can shrink, fvcore multiply-adds, parameters, the
pruned model's ONNX export re-run by onnxruntime against torch (max abs difference), and
onnxruntime latency (1 intra-op thread) at batch 64 and 1: each model's baseline and pruned
versions timed interleaved, one visit each per round, the median over rounds.
Writes benchmarks/results/pruning_compare.json and pruning_compare.md. The run that compared
the hand-written torch.fx analysis nas had before (and decided to replace it by Torch-Pruning's
dependency graph) is kept in pruning_compare_handwritten.md / .json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas import onnx_utils  # noqa: E402
from nas.compress.channel_groups import analyse, unsupported_ops  # noqa: E402
from nas.compress.filter_pruning_ops import prune_filters  # noqa: E402
from nas.compress.slimming_ops import slim  # noqa: E402
from objectives import count_flops, count_params  # noqa: E402

SHAPE = (3, 32, 32)
ROUND_TO = 8
TOLERANCE = 1e-3


# ----------------------------------------------------------------------------- models


def _resnet18() -> nn.Module:
    import torchvision

    m = torchvision.models.resnet18(num_classes=10)
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    return m


def _mobilenet_v2() -> nn.Module:
    import torchvision

    m = torchvision.models.mobilenet_v2(num_classes=10)
    m.features[0][0].stride = (1, 1)
    return m


def _efficientnet_b0() -> nn.Module:
    import torchvision

    m = torchvision.models.efficientnet_b0(num_classes=10)
    m.features[0][0].stride = (1, 1)
    return m


def _vit_tiny() -> nn.Module:
    import timm

    m = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=4
    )
    for a in _attentions(m):
        a.fused_attn = False  # plain matmuls: fvcore counts them (it skips fused SDPA)
    return m


# name -> (builder, classifier module name)
MODELS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "resnet18": (_resnet18, "fc"),
    "mobilenet_v2": (_mobilenet_v2, "classifier.1"),
    "efficientnet_b0": (_efficientnet_b0, "classifier.1"),
    "vit_tiny": (_vit_tiny, "head"),
}


def _attentions(model: nn.Module) -> list[nn.Module]:
    from timm.layers import Attention

    return [m for m in model.modules() if isinstance(m, Attention)]


def build(name: str) -> nn.Module:
    """The seeded network with random BN affine parameters and running statistics, in eval."""
    torch.manual_seed(0)
    model = MODELS[name][0]()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.05, 1.0)
            bn.bias.normal_(0.0, 0.1)
        if bns:
            model.train()
            for _ in range(4):
                model(torch.randn(32, *SHAPE))
    return model.eval()


def _conv_linear(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv / Linear layer, by name."""
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[n] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[n] = m.out_features
    return out


# ----------------------------------------------------------------------------- the two methods


def _share(model: nn.Module, need_bn: bool) -> tuple[float, dict]:
    """Share of conv / Linear output channels in the groups nas can shrink (``need_bn``: the
    slimmable ones, holding a BatchNorm): every conv / Linear pruned on its output axis by one
    of them, depthwise convs included, each layer once."""
    total = _conv_linear(model)
    groups = [g for g in analyse(model, SHAPE).groups if g.bns or not need_bn]
    layers = {n for g in groups for n in g.outputs}
    share = sum(total[n] for n in layers) / sum(total.values())
    return share, {
        "groups": len(groups),
        "layers": len(layers),
        "of_layers": len(total),
        "layer_names": sorted(layers),
    }


def prune_slim(model: nn.Module, ratio: float, classifier: str) -> tuple[nn.Module, float, dict]:
    share, info = _share(model, need_bn=True)
    return slim(model, ratio, SHAPE, round_to=ROUND_TO), share, info


def prune_l1(model: nn.Module, ratio: float, classifier: str) -> tuple[nn.Module, float, dict]:
    share, info = _share(model, need_bn=False)
    return prune_filters(model, ratio, SHAPE, criterion="l1", round_to=ROUND_TO), share, info


def _tp_share(pruner) -> tuple[float, dict]:
    """Share of conv / Linear output channels in Torch-Pruning's prunable groups: every layer
    whose output axis is pruned by a group that ``get_all_groups`` yields with the pruner's
    ignored layers (the classifier), each layer counted once."""
    dg = pruner.DG
    names = {m: n for n, m in pruner.model.named_modules()}
    total = _conv_linear(pruner.model)
    layers, groups = set(), 0
    for group in dg.get_all_groups(
        ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
    ):
        groups += 1
        for dep, _ in group:
            mod = dep.target.module
            if (
                dg.is_out_channel_pruning_fn(dep.handler)
                and isinstance(mod, nn.Module)
                and names.get(mod) in total
            ):
                layers.add(names[mod])
    share = sum(total[n] for n in layers) / sum(total.values())
    return share, {
        "groups": groups,
        "layers": len(layers),
        "of_layers": len(total),
        "layer_names": sorted(layers),
    }


def prune_tp(model: nn.Module, ratio: float, classifier: str) -> tuple[nn.Module, float, dict]:
    import torch_pruning as tp

    model = copy.deepcopy(model)
    vit = _attentions(model) if classifier == "head" else []
    heads = (
        {
            "num_heads": {a.qkv: a.num_heads for a in vit},
            "prune_num_heads": True,
            "prune_head_dims": False,
            "head_pruning_ratio": ratio,
        }
        if vit
        else {}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Unwrapped parameters detected" (cls_token, pos_embed)
        pruner = tp.pruner.MagnitudePruner(
            model,
            torch.randn(1, *SHAPE),
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=[model.get_submodule(classifier)],
            round_to=ROUND_TO,
            **heads,
        )
        share, info = _tp_share(pruner)
        pruner.step()
    for a in vit:  # timm's Attention reads these in forward
        a.num_heads = pruner.num_heads[a.qkv]
        a.head_dim = a.qkv.out_features // (3 * a.num_heads)
        a.attn_dim = a.num_heads * a.head_dim
    if vit:
        info["heads_per_layer"] = vit[0].num_heads
    return model.eval(), share, info


METHODS = {"slim": prune_slim, "filter_pruning": prune_l1, "torch-pruning": prune_tp}


# ----------------------------------------------------------------------------- measuring


def verify(model: nn.Module, onnx: bytes) -> dict:
    """onnxruntime vs torch on one fixed random batch of 8."""
    x = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    sess = onnx_utils.session(onnx, threads=1)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    diff = float(np.abs(got - ref).max())
    return {
        "onnx_max_abs_diff": diff,
        "output_max_abs": float(np.abs(ref).max()),
        "onnx_verified": bool(diff < TOLERANCE),
    }


def static(model: nn.Module) -> dict:
    onnx = onnx_utils.to_onnx(model, SHAPE)
    return {
        "flops": count_flops(model, SHAPE),
        "params": count_params(model),
        "onnx": onnx,
        **verify(model, onnx),
    }


def time_interleaved(onnxs: list[bytes], rounds: int, b1_repeats: int) -> list[dict]:
    """Latency (ms) of each model at batch 64 and 1, one visit per model per round (so a slow
    spell of the shared machine hits all models alike), the median over rounds; a visit is one
    batch-64 pass, or the median of ``b1_repeats`` batch-1 passes."""
    sessions = [onnx_utils.session(o, threads=1) for o in onnxs]
    out: list[dict] = [{} for _ in sessions]
    for key, batch, repeats in (("latency_ms_b64", 64, 1), ("latency_ms_b1", 1, b1_repeats)):
        for s in sessions:  # warm-up
            onnx_utils.time_ms(s, SHAPE, batch, warmup=2 if batch > 1 else 20, repeats=1)
        times: list[list[float]] = [[] for _ in sessions]
        for _ in range(rounds):
            for i, s in enumerate(sessions):
                times[i].append(onnx_utils.time_ms(s, SHAPE, batch, warmup=0, repeats=repeats))
        for o, t in zip(out, times, strict=True):
            o[key] = statistics.median(t)
    return out


def run_model(name: str, ratios: list[float], rounds: int, b1_repeats: int) -> list[dict]:
    t0 = time.time()
    base_model = build(name)
    classifier = MODELS[name][1]
    base = {"model": name, "method": "baseline", "ratio": 0.0, "ok": True, **static(base_model)}
    base["unsupported_ops"] = _unsupported(base_model)
    rows = [base]
    for method, fn in METHODS.items():
        for ratio in ratios:
            row: dict = {"model": name, "method": method, "ratio": ratio}
            t = time.time()
            try:
                pruned, share, info = fn(base_model, ratio, classifier)
            except Exception as e:  # a refusal or a failure: record it
                row.update(ok=False, refusal=f"{type(e).__name__}: {e}")
                print(json.dumps(row), flush=True)
                rows.append(row)
                continue
            row.update(ok=True, prune_s=time.time() - t, prunable_share=share, groups=info)
            try:
                row.update(static(pruned))
            except Exception as e:
                row.update(ok=False, refusal=f"measuring failed: {type(e).__name__}: {e}")
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "onnx"}), flush=True)
    timed = [r for r in rows if r.get("onnx")]
    latencies = time_interleaved([r["onnx"] for r in timed], rounds, b1_repeats)
    for r, lat in zip(timed, latencies, strict=True):
        r.update(lat)
    for r in rows:
        r.pop("onnx", None)
        if not r["ok"] or r is base:
            continue
        r["flops_before"], r["params_before"] = base["flops"], base["params"]
        r["flops_ratio"] = r["flops"] / base["flops"]
        r["flops_reduction"] = 1 - r["flops_ratio"]
        for b in ("b64", "b1"):
            r[f"latency_ms_{b}_before"] = base[f"latency_ms_{b}"]
            r[f"latency_{b}_reduction"] = 1 - r[f"latency_ms_{b}"] / base[f"latency_ms_{b}"]
        r["latency_over_flops_reduction"] = (
            r["latency_b64_reduction"] / r["flops_reduction"]
            if r["flops_reduction"] > 0.01
            else None
        )
    print(f"[{name}] done in {time.time() - t0:.0f}s", flush=True)
    return rows


def _unsupported(model: nn.Module) -> list[str] | str:
    try:
        return unsupported_ops(model, SHAPE)
    except ValueError as e:
        return f"ValueError: {e}"


# ----------------------------------------------------------------------------- report


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _ops(found: list[str] | str) -> str:
    """``unsupported_ops``' answer in a few words: how many, of which kinds."""
    if isinstance(found, str) or not found:
        return found or "none"
    return f"{len(found)} ({', '.join(found)})"


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| model | method | ratio | prunes? | prunable share | MACs before -> after | "
        "FLOPs after/before | lat b64 ms before -> after | lat b1 ms before -> after | "
        "lat cut / FLOPs cut (b64) | ONNX max abs diff | params after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["method"] == "baseline":
            continue
        head = f"| {r['model']} | {r['method']} | {r['ratio']:g} |"
        if not r["ok"]:
            reason = r["refusal"].split(";")[0][:120]
            lines.append(f"{head} no: {reason} | - | - | - | - | - | - | - | - |")
            continue
        lines.append(
            f"{head} yes | {100 * r['prunable_share']:.0f}% | "
            f"{r['flops_before'] / 1e6:.1f}M -> {r['flops'] / 1e6:.1f}M | "
            f"{r['flops_ratio']:.2f} | "
            f"{r['latency_ms_b64_before']:.1f} -> {r['latency_ms_b64']:.1f} | "
            f"{r['latency_ms_b1_before']:.2f} -> {r['latency_ms_b1']:.2f} | "
            f"{_f(r['latency_over_flops_reduction'], '.2f')} | "
            f"{r['onnx_max_abs_diff']:.1e}{'' if r['onnx_verified'] else ' FAIL'} | "
            f"{r['params_before'] / 1e6:.2f}M -> {r['params'] / 1e6:.2f}M |"
        )
    return lines


def summary(rows: list[dict]) -> list[str]:
    """The 'what this says' bullets, numbers taken from the rows."""
    done = [r for r in rows if r["method"] != "baseline"]
    models = list(dict.fromkeys(r["model"] for r in rows))

    def ok(method: str) -> list[dict]:
        return [r for r in done if r["method"] == method and r["ok"]]

    def first(method: str, model: str) -> dict | None:
        return next((r for r in ok(method) if r["model"] == model), None)

    def mean(vals: list) -> float | None:
        vals = [v for v in vals if v is not None]
        return statistics.mean(vals) if vals else None

    out = []
    for method in METHODS:
        rs = ok(method)
        covered = [m for m in models if first(method, m)]
        refused = [m for m in models if m not in covered]
        fails = [r for r in rs if not r["onnx_verified"]]
        q = [r["latency_over_flops_reduction"] for r in rs]
        out.append(
            f"- **{method}** prunes {len(covered)}/{len(models)} models"
            + (f" (refuses {', '.join(refused)})" if refused else "")
            + "; prunable share "
            + ", ".join(f"{m} {100 * first(method, m)['prunable_share']:.0f}%" for m in covered)
            + f"; FLOPs after/before {_f(mean([r['flops_ratio'] for r in rs]), '.2f')} on "
            f"average; latency cut / FLOPs cut at batch 64 {_f(mean(q), '.2f')} on average, "
            f"{_f(min((v for v in q if v is not None), default=None), '.2f')} at worst, "
            f"{sum(1 for v in q if (v or 0) >= 0.8)}/{len(rs)} rows >= 0.8; "
            f"analysis + surgery {_f(mean([r['prune_s'] for r in rs]), '.2f')} s per prune; "
            + (
                f"{len(fails)} export(s) failed verification"
                if fails
                else "every export verified (max abs diff "
                f"{_f(max((r['onnx_max_abs_diff'] for r in rs), default=None), '.1e')})"
            )
            + "."
        )
    for m in models:
        ours = {n for k in ("slim", "filter_pruning") for n in _layers(first(k, m))}
        only = sorted(set(_layers(first("torch-pruning", m))) - ours)
        if only:
            out.append(
                f"- {m}: {len(only)} conv / Linear layers only Torch-Pruning's pruner shrinks, "
                f"e.g. {', '.join(only[:4])}."
            )
    return out


def _layers(row: dict | None) -> list[str]:
    return row["groups"]["layer_names"] if row else []


def write(rows: list[dict], meta: dict, out: Path) -> None:
    said = summary(rows)
    (out / "pruning_compare.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    base = {r["model"]: r for r in rows if r["method"] == "baseline"}
    lines = [
        f"# Structural pruning: nas on Torch-Pruning's DepGraph vs Torch-Pruning's pruner "
        f"({meta['date']})",
        "",
        f"`{meta['command']}` ({meta['runtime_s']:.0f} s on {meta['machine']})",
        "",
        meta["recipe"],
        "",
        *table(rows),
        "",
        "Baselines (unpruned): "
        + "; ".join(
            f"{m} {b['flops'] / 1e6:.1f}M MACs, {b['params'] / 1e6:.2f}M params, "
            f"b64 {b['latency_ms_b64']:.1f} ms, b1 {b['latency_ms_b1']:.2f} ms, "
            f"ONNX diff {b['onnx_max_abs_diff']:.1e}"
            for m, b in base.items()
        )
        + ".",
        "",
        "How the prunable share is counted (all methods: output channels of conv / Linear "
        "layers whose output axis belongs to a group the method can shrink, each layer once, "
        "over the output channels of all conv / Linear layers, classifier included): for `slim`, "
        "every conv / Linear (depthwise included) pruned on its output axis by a group "
        "`nas.compress.channel_groups.analyse` finds prunable and holding a BatchNorm; for "
        "`filter_pruning`, by any prunable group; for Torch-Pruning, by a group "
        "`DG.get_all_groups(ignored_layers=[classifier])` yields. Ops outside the ones "
        "`channel_groups` knows to keep channels in place (it keeps the channels of the groups "
        "they touch): "
        + "; ".join(f"{m}: {_ops(b['unsupported_ops'])}" for m, b in base.items())
        + ".",
        "",
        "## What this says",
        "",
        *said,
        "",
        *NOTES,
    ]
    (out / "pruning_compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    ap.add_argument("--b1-repeats", type=int, default=20, help="batch-1 passes per visit")
    args = ap.parse_args()
    t0 = time.time()
    torch.set_num_threads(1)
    rows = [r for m in args.models for r in run_model(m, args.ratios, args.rounds, args.b1_repeats)]
    from importlib.metadata import version

    tp_version = version("torch-pruning")  # its __version__ string lags the release (1.6.0)
    meta = {
        "command": " ".join(["python benchmarks/pruning_compare.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, Python {platform.python_version()}, 2 cores",
        "date": time.strftime("%Y-%m-%d"),
        "versions": {"torch": torch.__version__, "torch_pruning": tp_version},
        "recipe": f"Random init (seed 0), random BN gammas / betas and running stats; "
        f"3x32x32 inputs, 10 classes; round_to={ROUND_TO}; MACs: fvcore (BN not counted); "
        f"latency: onnxruntime, 1 intra-op thread, baseline and pruned models of one network "
        f"timed interleaved, median of {args.rounds} rounds (batch 64: one pass per visit; "
        f"batch 1: median of {args.b1_repeats} passes per visit); ONNX diff: max |ort - torch| "
        f"on a fixed random batch of 8 (must be < {TOLERANCE:g}). torch {torch.__version__}, "
        f"torch-pruning {tp_version}.",
        "runtime_s": time.time() - t0,
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    write(rows, meta, out)


NOTES = [
    "Reading the table: random weights, no training, so this compares what each method can "
    "prune, the cost it removes and the exports, not accuracy. The same nominal ratio is not "
    "the same cut. Torch-Pruning's pruner removes `ratio` of every group (kept counts rounded "
    "*down* to 8), so each layer loses inputs and outputs and FLOPs fall to about "
    "(1 - ratio)^2; nas's `slim` and `filter_pruning` remove `ratio` of all channels by one "
    "global ranking (|gamma| or L1; kept counts rounded *up* to 8), so they cut fewer FLOPs at "
    "the same ratio and more where the scores are low. All three read the channel groups from "
    "the same Torch-Pruning `DependencyGraph`; nas pins (keeps) what it cannot prove safe: the "
    "timm ViT's fused `qkv` (an unbind; heads are the `head_pruning` technique's, which handles "
    "timm's fused `qkv`) and the groups an op outside its known channel-preserving ones touches "
    "(here the ViT's attention matmuls and softmax, inside the pinned `qkv` groups). "
    "Torch-Pruning's "
    "pruner, given `num_heads`, also prunes the heads and resets `num_heads` / `head_dim` "
    "afterwards (done here). `slim` refuses the ViT for want of BatchNorm.",
    "",
    "Before this run nas had its own torch.fx channel analysis; "
    "`pruning_compare_handwritten.md` is the run that measured it against Torch-Pruning "
    "(it pruned 3 of the 4 networks, 94% of efficientnet_b0's channels, none of the ViT's) and "
    "led to replacing it with the dependency graph (`nas/compress/channel_groups.py`).",
    "",
]


if __name__ == "__main__":
    main()
