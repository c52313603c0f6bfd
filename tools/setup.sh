#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian/Ubuntu machine and builds it.
#   bash tools/setup.sh            # system packages + Release build in ./build
#   bash tools/setup.sh --python   # also the Python packages for tools/ (matplotlib for the plots,
#                                  # torch/transformers for fixture generation, the `hf` client)
# Environment: BUILD_DIR (default build), RT_CUDA_ARCHS (default 89;90), RT_ENABLE_CUDA (ON).
set -euo pipefail
cd "$(dirname "$0")/.."

with_python=0
for arg in "$@"; do
  case "$arg" in
    --python) with_python=1 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

packages=(build-essential cmake ninja-build pkg-config python3
  libeigen3-dev libpcre2-dev libicu-dev libsentencepiece-dev sentencepiece
  libboost-dev libabsl-dev libcli11-dev libtomlplusplus-dev nlohmann-json3-dev libgtest-dev zlib1g-dev
  libgloo-dev)
# pip itself is not part of Debian's python3.
if ((with_python)); then packages+=(python3-pip); fi
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "== installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ((with_python)); then
  echo "== installing Python packages for tools/"
  # matplotlib first and on its own: tools/plot_*.py need only it, and it should not depend on
  # torch's download succeeding. Where pip refuses to install into the system Python (PEP 668,
  # "externally-managed-environment"), Debian's own package.
  if ! python3 -c "import matplotlib" 2>/dev/null; then
    python3 -m pip install -q matplotlib ||
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-matplotlib >/dev/null
  fi
  python3 -c "import matplotlib" || { echo "setup.sh: matplotlib is still not importable" >&2; exit 1; }
  # huggingface_hub >= 0.34 brings the `hf` client (hf download ...).
  python3 -m pip install -q torch transformers tokenizers safetensors numpy sentencepiece "huggingface_hub>=0.34"
fi

# cudnn-frontend's headers (header-only C++ API for cuDNN SDPA); harmless without a GPU.
if command -v nvcc >/dev/null 2>&1 && ! python3 -m pip show -q nvidia-cudnn-frontend >/dev/null 2>&1; then
  echo "== installing nvidia-cudnn-frontend (headers for cuDNN SDPA)"
  python3 -m pip install -q nvidia-cudnn-frontend || echo "   (not installed: cuDNN SDPA stays off)"
fi

build=${BUILD_DIR:-build}
echo "== configuring $build"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DRT_ENABLE_CUDA="${RT_ENABLE_CUDA:-ON}" -DRT_CUDA_ARCHS="${RT_CUDA_ARCHS:-89;90}" >/dev/null
echo "== building (this takes a few minutes on 2 cores)"
cmake --build "$build" -j"$(nproc)"
echo "== done: $build/bin/runtime --help"
