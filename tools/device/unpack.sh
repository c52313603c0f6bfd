#!/usr/bin/env bash
# On the GPU machine: unpacks .carry/gpu.tar.xz to build/ and points the baked-in source paths
# (/work/main) at this checkout. Source it: `source tools/device/unpack.sh`.
mkdir -p build && tar -C build -xJf .carry/gpu.tar.xz
export LD_LIBRARY_PATH="$PWD/build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ "$(readlink -f /work/main 2>/dev/null)" != "$PWD" ]; then mkdir -p /work && ln -sfn "$PWD" /work/main; fi
# cuDNN and NVRTC from the Python wheels when the system has none on the loader path.
for mod in cudnn cuda_nvrtc; do
  d=$(python3 -c "import nvidia.$mod, os; print(os.path.join(list(nvidia.$mod.__path__)[0], 'lib'))" 2>/dev/null) &&
    [ -d "$d" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
done
ldd build/bin/runtime | grep "not found" >&2 || true
