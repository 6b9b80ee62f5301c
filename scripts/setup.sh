#!/usr/bin/env bash
# Idempotent setup for a fresh machine: Debian packages, the Python venv whose libtorch
# serves tch, and the procgen/gym3 wheels unpacked into .deps/. A second run does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TORCH_VERSION=2.13.0
PROCGEN_VERSION=0.10.7
GYM3_VERSION=0.3.3
# Debian packages: libclang-dev (bindgen; libclang1 lacks stddef.h), cmake + libsdl2-gfx-dev
# (gym-rs always builds SDL2), graphviz (genotype diagrams), unzip (wheels).
# fonts-dejavu-core: the font of the learning-curve PNGs of `sweep collect`; slurmctld, slurmd,
# slurm-client, munge: the single-node Slurm that tests/sweep_slurm.rs starts (not started here).
# openmpi-bin, libopenmpi-dev: data-parallel training (`distributed.backend = "mpi"`): mpirun,
# and the headers and mpicc the `mpi` crate builds against. chromium: the headless browser in
# which tests/report_html.rs renders a run's report.html (screenshot and DOM).
APT_PACKAGES=(libclang-dev cmake libsdl2-gfx-dev graphviz unzip pkg-config fonts-dejavu-core
  slurmctld slurmd slurm-client munge openmpi-bin libopenmpi-dev chromium)

log() { printf '[setup] %s\n' "$*"; }

# --- Debian packages --------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "error: missing Debian packages: ${missing[*]}" >&2
    echo "run:   sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    echo "then run 'make setup' again." >&2
    exit 1
  fi
fi

# --- Rust: the toolchain rust-toolchain.toml pins, with clippy and rustfmt ----------------------
# The pin keeps a new clippy or rustfmt release from turning `make lint` red by itself. It names
# the exact version (such as `1.95.0`), which rustup resolves without the network once a toolchain of
# that name exists. When the stable toolchain already installed is that very version (a
# machine that reaches package registries only cannot download another), the pinned name is
# made a link to it: rustup's `toolchain link` refuses release-like names, so the link is made
# in rustup's toolchains folder directly, as rustup itself would lay it out. Otherwise rustup
# installs the pinned version (the minimal profile plus clippy and rustfmt).
RUST_VERSION=$(sed -n 's/^channel = "\(.*\)"$/\1/p' rust-toolchain.toml)
[ -n "$RUST_VERSION" ] || { echo "error: rust-toolchain.toml names no channel" >&2; exit 1; }
rustc_version() { rustup run "$1" rustc --version 2>/dev/null | awk '{ print $2 }' || true; }
if command -v rustup >/dev/null 2>&1; then
  if [ "$(rustc_version "$RUST_VERSION")" != "$RUST_VERSION" ]; then
    host=$(rustup show 2>/dev/null | sed -n 's/^Default host: //p' || true)
    toolchains=${RUSTUP_HOME:-$HOME/.rustup}/toolchains
    # A link an earlier run made to a stable toolchain that has moved on since: replace it.
    [ -n "$host" ] && [ -L "$toolchains/$RUST_VERSION-$host" ] && rm "$toolchains/$RUST_VERSION-$host"
    if [ -n "$host" ] && [ "$(rustc_version stable)" = "$RUST_VERSION" ] && [ -d "$toolchains/stable-$host" ]; then
      log "Rust $RUST_VERSION: the installed stable toolchain is that version; linking it as $RUST_VERSION-$host"
      ln -sfn "$toolchains/stable-$host" "$toolchains/$RUST_VERSION-$host"
    else
      log "installing Rust $RUST_VERSION (rust-toolchain.toml) with clippy and rustfmt"
      rustup toolchain install "$RUST_VERSION" --profile minimal --component clippy,rustfmt
    fi
  fi
  # A toolchain of the right version may lack the lint tools (a minimal install, a link).
  if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
    log "adding clippy and rustfmt to Rust $RUST_VERSION"
    rustup component add --toolchain "$RUST_VERSION" clippy rustfmt
  fi
elif ! cargo --version 2>/dev/null | grep -q "^cargo $RUST_VERSION "; then
  echo "error: this project builds with Rust $RUST_VERSION (rust-toolchain.toml), through rustup:" >&2
  echo "       curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --default-toolchain $RUST_VERSION --profile minimal -c clippy -c rustfmt" >&2
  echo "then run 'make setup' again." >&2
  exit 1
fi

# --- Python venv: torch (libtorch for tch) and the test oracles ------------------------------
PY=${PYTHON:-python3}
# ray: the sweep runner on Ray clusters (tests start a local one); rliable: the oracle of the
# IQM / stratified-bootstrap test (its arch dependency breaks on pandas 3).
REQS="torch==$TORCH_VERSION numpy<2 gym3==$GYM3_VERSION gym==0.23.1 tensorboard scikit-learn ray==2.60.0 rliable==1.2.0 pandas<3"
stamp=.venv/.rl-darts-setup
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$REQS" ]; then
  # A full disk otherwise surfaces as pip's "[Errno 28]" half way through torch. The venv takes
  # about 5.5 GB and cargo's build of the tests about 6 GB more.
  need_gb=12
  free_gb=$(( $(df -Pk . | awk 'NR == 2 { print $4 }') / 1024 / 1024 ))
  if [ "$free_gb" -lt "$need_gb" ]; then
    echo "error: $free_gb GB free on the disk of $ROOT; setup and the first build need about $need_gb GB" >&2
    echo "       (.venv with torch ~5.5 GB, cargo's target/ ~6 GB)." >&2
    echo "free some space (old runs/, other checkouts' target/ folders) and run 'make setup' again." >&2
    exit 1
  fi
  [ -x .venv/bin/python ] || { log "creating .venv"; "$PY" -m venv .venv; }
  log "installing into .venv: $REQS (torch is ~4.7 GB the first time)"
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install -q --disable-pip-version-check $REQS
  echo "$REQS" > "$stamp"
fi

# tch finds libtorch through .cargo/config.toml, which points at this stable link.
mkdir -p .deps
purelib=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ "$(readlink .deps/libtorch 2>/dev/null)" = "$purelib/torch" ] || ln -sfn "$purelib/torch" .deps/libtorch
# The data-parallel `nccl` backend: cudarc loads `libnccl.so` from the library search path, the
# torch wheel brings `libnccl.so.2`; link it under the loaded name (a run puts .deps/nccl on
# LD_LIBRARY_PATH; `rl-darts dist selftest --backend nccl` says so when it is missing).
nccl_lib="$purelib/nvidia/nccl/lib/libnccl.so.2"
if [ -f "$nccl_lib" ]; then
  mkdir -p .deps/nccl
  [ "$(readlink .deps/nccl/libnccl.so 2>/dev/null)" = "$nccl_lib" ] || ln -sfn "$nccl_lib" .deps/nccl/libnccl.so
fi

# --- procgen + gym3 wheels, unpacked --------------------------------------------------------
if [ ! -f .deps/procgen/procgen/data/prebuilt/libenv.so ] || [ ! -f .deps/gym3/gym3/libenv.h ]; then
  log "fetching procgen==$PROCGEN_VERSION and gym3==$GYM3_VERSION wheels"
  tmp=$(mktemp -d)
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.10 --platform manylinux2014_x86_64 -d "$tmp" "procgen==$PROCGEN_VERSION"
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" "gym3==$GYM3_VERSION"
  rm -rf .deps/procgen .deps/gym3
  mkdir -p .deps/procgen .deps/gym3
  unzip -q -o "$tmp"/procgen-*.whl -d .deps/procgen
  unzip -q -o "$tmp"/gym3-*.whl -d .deps/gym3
  rm -rf "$tmp"
fi

# --- digits data set (scikit-learn ships it) exported for the Rust loaders -------------------
if [ ! -f .deps/digits/digits.csv ]; then
  mkdir -p .deps/digits
  .venv/bin/python - <<'PY'
import os, shutil, sklearn.datasets as d
src = os.path.join(os.path.dirname(d.__file__), "data", "digits.csv.gz")
import gzip
with gzip.open(src, "rb") as f, open(".deps/digits/digits.csv", "wb") as g:
    shutil.copyfileobj(f, g)
PY
fi

log "ok (libtorch: $ROOT/.venv, procgen: $ROOT/.deps/procgen)"
