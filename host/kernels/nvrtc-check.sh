#!/usr/bin/env bash
# Compiles every CUDA C kernel of gantry-kernels (host/kernels/src/cuda/*.cu) with NVRTC, on a
# machine with no GPU and no CUDA toolkit: NVRTC comes from NVIDIA's PyPI wheel, installed once
# into a venv under target/ (reused while NVRTC_SPEC is unchanged). Fails if any kernel fails to
# compile, or if the compile tests did not actually run.
#
#   host/kernels/nvrtc-check.sh                 # from anywhere
#   NVRTC_SPEC='nvidia-cuda-nvrtc==13.2.*' host/kernels/nvrtc-check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

# CUDA 13's NVRTC, matching cudarc's `cuda-13000` feature (it looks for libnvrtc.so.13). 13.0 is
# the oldest CUDA 13: what compiles here compiles on every CUDA 13 machine.
spec=${NVRTC_SPEC:-nvidia-cuda-nvrtc==13.0.88}
venv=target/nvrtc-venv
stamp=$venv/.gantry-installed

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$spec" ]; then
  echo "== installing $spec into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$spec"
  echo "$spec" >"$stamp"
fi

so=$(find "$venv" -name 'libnvrtc.so.13' -print -quit)
if [ -z "$so" ]; then
  echo "no libnvrtc.so.13 in $venv (does $spec ship CUDA 13's NVRTC?)" >&2
  exit 1
fi
lib=$(cd "$(dirname "$so")" && pwd)
# Some loaders ask for the unversioned name; the wheel ships only the versioned one.
ln -sfn libnvrtc.so.13 "$lib/libnvrtc.so"

echo "== NVRTC from $lib"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# GANTRY_REQUIRE_NVRTC=1: a test that cannot load NVRTC fails instead of skipping.
LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" GANTRY_REQUIRE_NVRTC=1 \
  cargo test -p gantry-kernels --features cuda --no-fail-fast --lib --test cuda -- \
  cuda::kernels:: every_cuda_kernel_compiles_to_ptx a_broken_kernel_is_refused \
  --show-output 2>&1 | tee "$log"

# A renamed test would match no filter and "pass" by running nothing: insist on each.
for t in every_cuda_kernel_compiles_to_ptx \
  a_broken_kernel_is_refused_with_the_compilers_message \
  cuda::kernels::tests::kernels_compile_for_the_devices_architecture_once; do
  if ! grep -qx "test $t \.\.\. ok" "$log"; then
    echo "nvrtc-check: $t did not run and pass" >&2
    exit 1
  fi
done
echo "== every CUDA kernel compiles"
