#!/usr/bin/env bash
# The GPU checks, in two halves, for a machine with a GPU but no Rust toolchain (the device
# tool's lent machine): `build` here (x86-64, CUDA libraries not needed), then `run` there.
#
#   host/kernels/gpu-check.sh build         # -> target/gpu-check/{gantry,cuda-tests,dense.toml}
#   host/kernels/gpu-check.sh run [OUTDIR]  # on the GPU machine, from the repo root, with
#                                           # target/gpu-check carried; logs into OUTDIR
#
# `run` needs CUDA 13's libcuda, libcublas, libnvrtc (and libnccl for NCCL) on the library
# path, and a Python with PyTorch for the peers (optional).
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=target/gpu-check

case "${1:-}" in
build)
  mkdir -p "$dir"
  cargo build --release -p gantry-cli --features cuda
  cp target/release/gantry "$dir/gantry"
  # The CUDA integration tests as a standalone binary (cargo prints its path).
  bin=$(cargo test --release -p gantry-kernels --features cuda --test cuda --no-run 2>&1 |
    sed -n 's/.*Executable tests\/cuda.rs (\(.*\))$/\1/p' | tail -1)
  cp "$bin" "$dir/cuda-tests"
  sed 's/backend = "auto"/backend = "cuda"/' host/assets/train/dense.toml >"$dir/dense.toml"
  ls -la "$dir"
  ;;
run)
  out=${2:-${OUT:-target/gpu-check/out}}
  mkdir -p "$out"
  # NCCL's libnccl.so.2 is found through an unversioned link only; CUDA libraries from the
  # PyTorch wheels work too.
  for d in /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, d, "lib") for p in nvidia.__path__ for d in os.listdir(p)))' 2>/dev/null || true); do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
  done
  links=$(mktemp -d)
  for lib in nccl nvrtc cublas; do
    so=$(ldconfig -p 2>/dev/null | awk -v l="lib$lib.so." '!found && $1 ~ "^"l {print $NF; found = 1}')
    [ -z "$so" ] && so=$(IFS=:; for d in $LD_LIBRARY_PATH; do ls "$d"/lib$lib.so.* 2>/dev/null; done | sed -n 1p)
    [ -n "$so" ] && ln -sf "$so" "$links/lib$lib.so"
  done
  export LD_LIBRARY_PATH="$links:$LD_LIBRARY_PATH"
  nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
  "$dir/gantry" devices | tee "$out/devices.txt"
  GANTRY_REQUIRE_GPU=1 "$dir/cuda-tests" --test-threads=1 2>&1 | tee "$out/cuda-tests.txt"
  "$dir/gantry" train --config "$dir/dense.toml" --json | tee "$out/train.json"
  "$dir/gantry" bench kernels --json --rounds 1 | tee "$out/bench-kernels.json"
  ;;
*)
  echo "usage: $0 build | run [OUTDIR]" >&2
  exit 2
  ;;
esac
