#!/usr/bin/env bash
# The GPU checks, in two halves, for a machine with a GPU but no Rust toolchain (the device
# tool's lent machine): `build` here (x86-64, CUDA libraries not needed), then `run` there.
#
#   host/kernels/gpu-check.sh build         # -> target/gpu-check/{gantry,cuda-tests,dense.toml}
#   host/kernels/gpu-check.sh run [OUTDIR]  # on the GPU machine, from the repo root, with
#                                           # target/gpu-check carried; logs into OUTDIR
#   host/kernels/gpu-check.sh agent|local [OUTDIR] # one of its node-agent checks alone
#
# `run` needs CUDA 13's libcuda, libcublas, libnvrtc (and libnccl for NCCL) on the library
# path, and a Python with PyTorch for the peers (optional).
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=target/gpu-check

# A node agent discovers this machine's GPUs (PCI addresses, NVML health): as `gantry agent`
# registering them with a control plane on loopback (mode `agent`), or as the agent inside a
# plain `gantry up` (mode `local`, node `local`); a training job placed on one of them runs
# there, and its log names the GPU by its PCI address. Logs into $2. Without a GPU it can be
# tried with AGENT_DEVICES="--emulate-gpus 2" and TRAIN=host/assets/train/dense.toml.
agent_check() {
  local mode=$1 out=$2 work url id state
  local node_name=gpu-node
  [ "$mode" = local ] && node_name=local
  work=$(mktemp -d)
  "$dir/gantry" init --data-dir "$work/data" >/dev/null 2>&1
  local rae node
  rae=$("$dir/gantry" user add rae --roles researcher,runner --tenants vision --data-dir "$work/data" 2>/dev/null)
  node=$("$dir/gantry" user add gpu-node --roles node --tenants vision --data-dir "$work/data" 2>/dev/null)
  # One node that never serves (it has no agent): the GPU node registers with its heartbeat.
  printf '[[tenants]]\nname = "vision"\n\n[[nodes]]\nname = "spare"\nrack = "r0"\ngpus = { count = 1, model = "none", memory_mib = 1024 }\n' >"$work/cluster.toml"
  local up agent=
  if [ "$mode" = local ]; then
    # shellcheck disable=SC2086 # AGENT_DEVICES is a list of arguments
    "$dir/gantry" up --data-dir "$work/data" --listen 127.0.0.1:0 ${AGENT_DEVICES:-} \
      >"$work/up.out" 2>"$out/$mode-check-up.log" &
    up=$!
    for _ in $(seq 150); do grep -q "serving" "$out/$mode-check-up.log" && break; sleep 0.2; done
  else
    "$dir/gantry" up --data-dir "$work/data" --listen 127.0.0.1:0 --cluster "$work/cluster.toml" \
      --agent-lease-s 10 >"$work/up.out" 2>"$out/$mode-check-up.log" &
    up=$!
  fi
  for _ in $(seq 150); do grep -q "^listening on" "$work/up.out" && break; sleep 0.2; done
  url=http://$(sed -n 's/^listening on //p' "$work/up.out")
  if [ "$mode" = agent ]; then
    # shellcheck disable=SC2086 # AGENT_DEVICES is a list of arguments
    GANTRY_TOKEN=$node timeout 600 "$dir/gantry" agent --node gpu-node --url "$url" --job-user nobody ${AGENT_DEVICES:-} \
      >"$out/agent.log" 2>&1 &
    agent=$!
    for _ in $(seq 150); do grep -q "serving" "$out/agent.log" && break; sleep 0.2; done
  fi
  # Waits for job $1 to end, its log into $2; says its state.
  finish() {
    local state=
    for _ in $(seq 600); do
      state=$(GANTRY_TOKEN=$rae "$dir/gantry" jobs --url "$url" --json |
        python3 -c "import json,sys; print(next(j['state'] for j in json.load(sys.stdin) if j['id'] == '$1'))")
      case $state in succeeded | failed) break ;; esac
      sleep 0.5
    done
    GANTRY_TOKEN=$rae "$dir/gantry" logs --url "$url" "$1" >"$2"
    echo "$state"
  }
  id=$(GANTRY_TOKEN=$rae "$dir/gantry" submit --url "$url" --tenant vision --gpus 1 --train "${TRAIN:-$dir/dense.toml}")
  state=$(finish "$id" "$out/$mode-job-log.txt")
  cat "$out/$mode-job-log.txt"
  # A command job on one GPU opens that GPU's device node and no other GPU's (its cgroup closes
  # them: CUDA_VISIBLE_DEVICES alone only hides them from CUDA). Agent mode, run as `nobody`.
  local nodes=ok
  if [ "$mode" = agent ]; then
    local cid cstate
    cid=$(GANTRY_TOKEN=$rae "$dir/gantry" submit --url "$url" --tenant vision --gpus 1 -- sh -c \
      'for n in /dev/nvidia[0-9]*; do if (exec 3<"$n") 2>/dev/null; then echo "$n open"; else echo "$n closed"; fi; done')
    cstate=$(finish "$cid" "$out/$mode-command-log.txt")
    cat "$out/$mode-command-log.txt"
    echo "$mode check: command job $cid $cstate"
    local want=0
    ls /dev/nvidia[0-9]* >/dev/null 2>&1 && want=1
    [ "$cstate" = succeeded ] && [ "$(grep -c ' open$' "$out/$mode-command-log.txt")" = "$want" ] || nodes=failed
  fi
  # shellcheck disable=SC2086 # no agent process in mode local
  kill $agent "$up" 2>/dev/null || true
  wait 2>/dev/null || true
  echo "$mode check: job $id $state"
  [ "$nodes" = ok ] && [ "$state" = succeeded ] &&
    grep -q "runs on node $node_name: GPUs $node_name/gpu" "$out/$mode-job-log.txt"
}

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
  "$dir/gantry" devices --json | tee "$out/devices.json"
  agent_check agent "$out"
  agent_check local "$out"
  ;;
agent | local)
  # One agent check alone (see agent_check), with the binary at target/gpu-check/gantry.
  out=${2:-${OUT:-target/gpu-check/out}}
  mkdir -p "$out"
  agent_check "$1" "$out"
  ;;
*)
  echo "usage: $0 build | run [OUTDIR] | agent [OUTDIR] | local [OUTDIR]" >&2
  exit 2
  ;;
esac
