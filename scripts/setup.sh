#!/usr/bin/env bash
# One-step set-up, idempotent: .venv, torch (CPU), the project with its dev extra, and the Debian
# packages: the Fashion-MNIST dataset, PostgreSQL (shared studies), chromium (the report test).
# Used by `make test`; `make demo` runs `setup.sh --demo`: what the demo needs only (the project
# without its dev extra, the dataset; no PostgreSQL, no chromium). A full set-up serves the demo.
#   TORCH_SPEC  torch (+ torchvision) requirements to install first (default torch==2.14.1
#               torchvision==0.29.1: the pair that pip gives a GPU user; it runs on the CPU too.
#               The CPU-only torch 2.13.0 cannot import torchvision's C++ ops)
#   PYTHON      interpreter for the venv (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=full
case "${1:-}" in
    --demo) MODE=demo ;;
    "") ;;
    *) echo "usage: $0 [--demo]  (--demo: what \`make demo\` needs only)" >&2; exit 2 ;;
esac
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
STAMP="$VENV/.installed"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

# the stamp: the hash of what was installed, then "full" (the dev extra too) or "demo"
want="$(echo "$(cat pyproject.toml) $TORCH_SPEC" | sha256sum | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$have" != "$want full" ] && { [ "$MODE" = full ] || [ "$have" != "$want demo" ]; }; then
    # (pip's "Location ... is ignored" lines: the local package mirrors' missing indexes)
    if [ "${have%% *}" != "$want" ]; then
        echo "[setup] installing $TORCH_SPEC (first time: several GB, about a minute)"
        # shellcheck disable=SC2086  # TORCH_SPEC holds several requirements
        "$VENV/bin/pip" install -q $TORCH_SPEC 2>&1 | grep -v "is ignored: it is neither" || true
    fi
    target=".[dev]"
    [ "$MODE" = demo ] && target="."
    echo "[setup] installing the project (pip install -e $target)"
    "$VENV/bin/pip" install -q -e "$target" 2>&1 | grep -v "is ignored: it is neither" || true
    "$VENV/bin/python" -c "import nas, torch, torchvision, timm, torch_pruning, optuna, onnxruntime" || {
        echo "[setup] the install failed; see the pip output above" >&2; exit 1; }
    echo "$want $MODE" > "$STAMP"
fi

# Debian packages, each installed when missing (as root with apt-get), else a note on what skips
apt_need() {  # apt_need PACKAGE "what is skipped without it"
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "[setup] installing the Debian package $1"
        (apt-get install -y -q "$1" >/dev/null 2>&1) || {
            apt-get update -q >/dev/null && apt-get install -y -q "$1" >/dev/null; }
    else
        echo "[setup] note: $1 is missing; as root run 'apt-get install $1' ($2)" >&2
    fi
}

# Fashion-MNIST (IDX files): the demo and the tests that train on it
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
   && [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte ]; then
    apt_need dataset-fashion-mnist "tests that need it are skipped"
fi

[ "$MODE" = demo ] && exit 0  # the rest: what the tests need

# PostgreSQL server: studies shared by workers on several hosts (the tests start a private one)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt_need postgresql "the shared-study tests are skipped"
fi

# Headless chromium: the test that renders `nas report` output in a real browser
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    apt_need chromium "the browser test of the HTML report is skipped"
fi
