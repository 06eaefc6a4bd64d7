#!/bin/sh
# Build meshgate's wheel and install it, with its pinned runtime dependencies, into a fresh
# virtual environment. The Dockerfile's builder stage runs this script, and so does
# tests/test_dockerfile.py: what the image ships is what the test has checked.
#
# usage: docker/build.sh [SRC_DIR [VENV_DIR]]
#   SRC_DIR   the source tree: pyproject.toml, README.md, constraints.txt and webhook/
#             (default: $MESHGATE_SRC, else the directory above this script)
#   VENV_DIR  the virtual environment to create; it must not exist yet
#             (default: $MESHGATE_VENV, else /opt/meshgate). Its scripts name its own path,
#             so it must be built where it will run.
#   PYTHON    the interpreter the environment is made from (default: python3); it needs
#             pip >= 22.3. The environment itself gets no pip.
#
# Dependencies are installed as binary wheels only (no compiler needed or wanted) at the
# exact versions of constraints.txt. pip's cache is used when there is one.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=${1:-${MESHGATE_SRC:-$(dirname "$here")}}
venv=${2:-${MESHGATE_VENV:-/opt/meshgate}}
python=${PYTHON:-python3}

fail() {
    echo "build.sh: $*" >&2
    exit 2
}

for f in pyproject.toml README.md constraints.txt webhook/__init__.py; do
    [ -f "$src/$f" ] || fail "$src/$f is missing (is $src the source tree?)"
done
[ ! -e "$venv" ] || fail "$venv already exists"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# Build from a copy of exactly what the wheel is made of, so the source tree gets no
# build/ or *.egg-info and no stray file ends up in the wheel.
mkdir "$work/src" "$work/wheels"
cp -R "$src/pyproject.toml" "$src/README.md" "$src/webhook" "$work/src/"
find "$work/src" -name __pycache__ -type d -prune -exec rm -rf {} +

"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/wheels" "$work/src"
set -- "$work"/wheels/meshgate-*.whl
[ "$#" -eq 1 ] && [ -f "$1" ] || fail "expected one meshgate wheel, got: $*"
wheel=$1

"$python" -m venv --without-pip "$venv"
"$python" -m pip --python "$venv/bin/python" install --quiet \
    --only-binary :all: \
    --constraint "$src/constraints.txt" \
    "$wheel"
"$python" -m pip --python "$venv/bin/python" check

# Smoke test: the console script starts and the embedded policy loads.
"$venv/bin/meshgate" --help >/dev/null
echo "build.sh: installed $(basename "$wheel") into $venv" >&2
