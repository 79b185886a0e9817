#!/usr/bin/env bash
# One GPU check for a machine with one CUDA GPU and torch/torchvision preinstalled, no package
# index: installs the wheels of optuna & co. from WHEELDIR, then, in about 11 minutes,
#   1. runs the GPU-marked tests,
#   2. trains a mini-ViT (paper shape) on Fashion-MNIST padded to 32×32, dense vs OIALR, bf16,
#   3. measures the low-rank/dense step-time ratio on the GPU, and which forward (factored or
#      materialised) each conv shape should run there (benchmarks/conv_paths.py),
#   4. runs a 4-trial study with --gpus 0,
#   5. measures trials per hour with 1, 2, 4, 8 workers on GPU 0 (quickstart and LeNet-5),
# and writes every number to OUTDIR (summary.json gathers them).
#
#   benchmarks/gpu_check.sh OUTDIR [WHEELDIR] [--data-dir DIR]   # on the GPU machine
#   benchmarks/gpu_check.sh OUTDIR --dry-run                     # on a CPU, tiny sizes (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: benchmarks/gpu_check.sh OUTDIR [WHEELDIR] [--dry-run] [--data-dir DIR]}
shift
WHEELS="" DRY=0 DATA=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --data-dir) DATA=$2; shift ;;
    *) WHEELS=$1 ;;
  esac
  shift
done
mkdir -p "$OUT"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ "$DRY" = 1 ] && PY=.venv/bin/python
if [ -n "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/oialr-site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/oialr-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
OIALR=("$PY" -m oialr)
DATA_ARGS=()
[ -n "$DATA" ] && DATA_ARGS=(--data-dir "$DATA")

if [ "$DRY" = 1 ]; then  # the same steps at toy sizes on the CPU, so the script cannot rot
  DEVICE=cpu EPOCHS=1 SUBSET=(--subset 512) MODEL_SIZE=small QUICK=(--quick) TRIALS=2
else
  DEVICE=cuda EPOCHS=8 SUBSET=() MODEL_SIZE=paper QUICK=() TRIALS=4
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv"
fi
"$PY" -c "import torch, json; print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(), 'device': torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}))" > "$OUT/machine.json"
cat "$OUT/machine.json"

echo "== 1. GPU-marked tests"
"$PY" -m pytest -q -m gpu tests/test_lowrank.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.txt" | tail -3
[ "${PIPESTATUS[0]}" = 0 ] || [ "${PIPESTATUS[0]}" = 5 ]  # 5: every test deselected (the dry run)

echo "== 2. mini-ViT on Fashion-MNIST 32x32, dense vs OIALR (bf16 on CUDA)"
for mode in dense oialr; do
  "${OIALR[@]}" train --model minivit --model-options size="$MODEL_SIZE" --dataset fashion-mnist \
    "${DATA_ARGS[@]}" "${SUBSET[@]}" --pad-to 32 --epochs "$EPOCHS" --batch-size 256 --lr 1e-3 \
    --warmup-steps 200 --label-smoothing 0.1 --mode "$mode" --delay 0.25 --delay-unit fraction \
    --update-freq 100 --sigma-cutoff 0.15 --device "$DEVICE" --no-store --json --quiet \
    --checkpoint-dir "$OUT/ckpt-$mode" > "$OUT/minivit_$mode.json"
  cat "$OUT/minivit_$mode.json"
done

echo "== 3. step time, low-rank over dense"
"$PY" benchmarks/step_time.py --device "$DEVICE" "${QUICK[@]}" --out "$OUT/step_time.json" | tail -25

echo "== 3b. which forward low-rank convs should run on this device (calibrates PASS_COST)"
"$PY" benchmarks/conv_paths.py --device "$DEVICE" "${QUICK[@]}" --out "$OUT/conv_paths.json" | tail -4

echo "== 4. a $TRIALS-trial study with --gpus 0"
sed -e 's/^device = .*/device = "'"$DEVICE"'"/' -e 's/^subset = .*/subset = 5000/' studies/quickstart.toml > "$OUT/study.toml"
[ -n "$DATA" ] && sed -i "s|^\[run\]|[run]\ndata_dir = \"$DATA\"|" "$OUT/study.toml"
GPU_FLAG=(--gpus 0)
[ "$DRY" = 1 ] && GPU_FLAG=(--workers 1)
start=$(date +%s)
"${OIALR[@]}" study run "$OUT/study.toml" --storage "sqlite:///$OUT/study.db" --n-trials "$TRIALS" "${GPU_FLAG[@]}" --quiet
echo "{\"study_seconds\": $(( $(date +%s) - start )), \"trials\": $TRIALS}" > "$OUT/study_time.json"
"${OIALR[@]}" study show quickstart --storage "sqlite:///$OUT/study.db" | tee "$OUT/study_show.txt"
"${OIALR[@]}" study export quickstart --storage "sqlite:///$OUT/study.db" --format json --output "$OUT/study_trials.json"

echo "== 5. trials per hour with 1, 2, 4, 8 workers packed on one GPU"
if [ "$DRY" = 1 ]; then
  "$PY" benchmarks/packing.py --device cpu --ks 1,2 --trials 2 --quick --specs quickstart --out "$OUT/packing.json"
else
  "$PY" benchmarks/packing.py --ks 1,2,4,8 --trials 8 "${DATA_ARGS[@]}" --out "$OUT/packing.json"
fi

"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.stem != "summary"}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print("wrote", out / "summary.json")
PY
