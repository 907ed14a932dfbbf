#!/usr/bin/env bash
# Wheel bundle for the offline GPU machine (NVIDIA H200, x86_64, Python 3.12.3, torch 2.11.0+cu130,
# transformers 5.17, huggingface-hub 1.33, numpy 2.5; no network there).
#
# That machine's image already holds torch, numpy, scipy, pillow, imageio, pyyaml, transformers,
# accelerate, peft, safetensors, tqdm, ninja, rich, jaxtyping ... but not the packages pinned below.
# This script downloads them HERE (where PyPI is reachable) as cp312/manylinux wheels into the ignored
# folder .gpu-wheels/ at the repo root, which then travels with the working tree. tools/gpu_check.py
# installs them there without an index and puts them on the path (dreamcore itself is not installed):
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu-wheels/*.whl
#   PYTHONPATH=/tmp/site:$PWD python3 tools/gpu_check.py
#
# Nothing already on the GPU machine is bundled: /tmp/site comes before site-packages on the path, so a
# bundled copy would shadow (and could break) the image's own version.
#
# Usage: tools/gpu_wheels.sh            download what is missing, then check versions and size
#        tools/gpu_wheels.sh --list     print the pinned requirement lines (no network)
#        tools/gpu_wheels.sh --check    install the bundle into a temporary --target and verify it
# PYTHON=... picks the interpreter whose pip does the work (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.gpu-wheels"
MAX_MIB=60
PY="${PYTHON:-python3}"

# name==version  top-level import(s) the --target must hold  # why it is needed
# Pins were read against torch 2.11, transformers 5.17, huggingface-hub 1.33, numpy 2.5 (Requires-Dist).
PINS=(
  "diffusers==0.42.1|diffusers"                     # SD UNet/VAE priors; needs hub>=1.32,<3, safetensors>=0.8
  "omegaconf==2.4.0|omegaconf"                      # config files; 2.4 vendors antlr4 (no antlr4 runtime)
  "trimesh==5.2.0|trimesh"                          # mesh I/O (STL), Taubin smoothing
  "PyMCubes==0.1.6|mcubes"                          # marching cubes at export
  "xatlas==0.0.11|xatlas"                           # UV atlas (texture config, export)
  "fast-simplification==0.2.0|fast_simplification"  # decimation at export
  "DracoPy==2.2.0|DracoPy"                          # Draco-compressed glTF input
  "gsplat==1.5.3|gsplat"                            # CUDA splat rasterizer (JIT-built with nvcc/ninja)
  "nerfacc==0.5.3|nerfacc"                          # NeRF parity tests (JIT-built with nvcc/ninja)
)

PIP_TARGET_FLAGS=(--only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

export PIP_ROOT_USER_ACTION=ignore  # quiet when run as root (older pips ignore it)

die() { echo "gpu_wheels: $*" >&2; exit 1; }
# PEP 503 name as it appears in wheel file names: lower case, runs of -_. as one _
norm() { echo "$1" | tr '[:upper:]' '[:lower:]' | sed -E 's/[-_.]+/_/g'; }

# Is the pinned wheel (name, version) already in DEST?
have_wheel() {
  local want_name want_ver f base
  want_name="$(norm "$1")"; want_ver="$2"
  for f in "$DEST"/*.whl; do
    [[ -e "$f" ]] || continue
    base="$(basename "$f")"
    [[ "$(norm "${base%%-*}")" == "$want_name" ]] || continue
    base="${base#*-}"
    [[ "${base%%-*}" == "$want_ver" ]] && return 0
  done
  return 1
}

# Exactly one wheel per pinned package, nothing else; print sizes, enforce the cap.
verify_bundle() {
  local f base name total=0 size pin req
  local -A seen=() pinned=()
  for pin in "${PINS[@]}"; do
    req="${pin%%|*}"
    pinned["$(norm "${req%%==*}")"]="$req"
  done
  shopt -s nullglob
  local wheels=("$DEST"/*.whl)
  shopt -u nullglob
  (( ${#wheels[@]} )) || die "no wheels in $DEST (run tools/gpu_wheels.sh first)"
  for f in "${wheels[@]}"; do
    base="$(basename "$f")"
    name="$(norm "${base%%-*}")"
    [[ -n "${pinned[$name]:-}" ]] || die "$base is not pinned here: delete it"
    [[ -z "${seen[$name]:-}" ]] || die "two versions of $name: ${seen[$name]} and $base (delete the stale one)"
    seen["$name"]="$base"
  done
  for name in "${!pinned[@]}"; do
    [[ -n "${seen[$name]:-}" ]] || die "missing wheel for ${pinned[$name]} (run tools/gpu_wheels.sh)"
    req="${pinned[$name]}"
    have_wheel "${req%%==*}" "${req##*==}" || die "${seen[$name]} is not the pinned ${req} (delete it)"
  done
  for f in "${wheels[@]}"; do
    size="$(stat -c %s "$f")"
    total=$((total + size))
    awk -v s="$size" -v n="$(basename "$f")" 'BEGIN { printf "%9.2f MiB  %s\n", s / 1048576, n }'
  done
  awk -v s="$total" -v c="${#wheels[@]}" 'BEGIN { printf "%9.2f MiB  total (%d wheels)\n", s / 1048576, c }'
  (( total <= MAX_MIB * 1048576 )) || die "bundle is over ${MAX_MIB} MiB"
}

download() {
  local pin req missing=()
  mkdir -p "$DEST"
  for pin in "${PINS[@]}"; do
    req="${pin%%|*}"
    if have_wheel "${req%%==*}" "${req##*==}"; then
      echo "have     $req"
    else
      missing+=("$req")
    fi
  done
  if (( ${#missing[@]} )); then
    echo "download ${missing[*]}"
    "$PY" -m pip download -q --disable-pip-version-check --no-deps "${PIP_TARGET_FLAGS[@]}" \
      -d "$DEST" "${missing[@]}"
  fi
  verify_bundle
}

check() {
  local tmp pin mod
  verify_bundle
  tmp="$(mktemp -d)"
  trap "rm -rf '$tmp'" EXIT
  "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
    --target "$tmp" "${PIP_TARGET_FLAGS[@]}" "$DEST"/*.whl
  for pin in "${PINS[@]}"; do
    for mod in ${pin#*|}; do  # a package folder, or a module file (extension .so or .py)
      if [[ -d "$tmp/$mod" ]] || compgen -G "$tmp/$mod.*" >/dev/null; then
        echo "ok       $mod"
      else
        die "the --target install lacks $mod (from ${pin%%|*})"
      fi
    done
  done
  echo "check passed: the bundle installs with --no-index --no-deps for cp312 manylinux x86_64"
}

case "${1:-}" in
  --list) for pin in "${PINS[@]}"; do echo "${pin%%|*}"; done ;;
  --check) check ;;
  "") download ;;
  *) die "usage: tools/gpu_wheels.sh [--list|--check]" ;;
esac
