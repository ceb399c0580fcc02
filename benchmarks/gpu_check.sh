#!/usr/bin/env bash
# GPU readiness check, for when a GPU machine is lent (issue 12). From the repository root:
#
#   bash benchmarks/gpu_check.sh            # ~200 steps at 256x128, mixed_float16, XLA off/on
#
# 1. Sets up .venv-gpu with the README's GPU install line (tensorflow[and-cuda] +
#    onnxruntime-gpu) and shows the GPU TensorFlow sees.
# 2. Trains ResNet50 (random init; ImageNet weights need a download) on built-in synthetic data
#    for STEPS steps of 64 images at 256x128 under mixed_float16, once with XLA off and once on,
#    and prints the throughput callback's images/s for each.
# 3. Exports the XLA-off run (SavedModel + ONNX, parity check: Keras vs SavedModel vs
#    onnxruntime within 1e-4) and ranks its synthetic test set with onnxruntime's CUDA provider.
#
# Meant to finish in under 10 minutes on a data-centre GPU. Knobs (environment):
#   STEPS=200 HEIGHT=256 WIDTH=128 BACKBONE=resnet50 PRECISION=mixed_float16 XLA="off on"
#   VENV=.venv-gpu SKIP_INSTALL=1 (use VENV as it is) OUT=runs/gpu_check
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${STEPS:-200}
HEIGHT=${HEIGHT:-256}
WIDTH=${WIDTH:-128}
BACKBONE=${BACKBONE:-resnet50}
PRECISION=${PRECISION:-mixed_float16}
XLA=${XLA:-off on}
VENV=${VENV:-.venv-gpu}
OUT=${OUT:-runs/gpu_check}
EXTRA=${EXTRA:-gpu}
PY="$VENV/bin/python"
start=$SECONDS

if [[ -z "${SKIP_INSTALL:-}" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -e ".[$EXTRA]"
fi
"$PY" - <<'PY'
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
print("tensorflow", tf.__version__, "GPUs:", [tf.config.experimental.get_device_details(g)
                                             for g in gpus] or "none")
import onnxruntime as ort
print("onnxruntime", ort.__version__, "providers:", ort.get_available_providers())
PY

epochs=2
steps_per_epoch=$(( (STEPS + epochs - 1) / epochs ))
for xla in $XLA; do
  jit=false; [[ "$xla" == "on" ]] && jit=true
  run="$OUT/xla_$xla"
  echo "== training: $BACKBONE ${HEIGHT}x${WIDTH}, $PRECISION, XLA $xla, $epochs x $steps_per_epoch steps"
  t0=$SECONDS
  "$PY" -m tfmarket.train --config configs/market1501_resnet50.yaml --workdir "$run" --restart \
    --set data.root= --set data.height="$HEIGHT" --set data.width="$WIDTH" \
    --set data.synth_train_ids=200 --set data.synth_test_ids=40 --set data.val_ids=20 \
    --set model.backbone="$BACKBONE" --set model.weights=none \
    --set train.epochs=$epochs --set train.steps_per_epoch=$steps_per_epoch \
    --set train.warmup_epochs=1 --set train.precision="$PRECISION" \
    --set train.jit_compile=$jit --set train.eval_every=$epochs
  "$PY" - "$run" "$xla" $(( SECONDS - t0 )) <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/metrics.json"))
rates = m["images_per_second"]
print(f"XLA {sys.argv[2]}: precision {m['precision']}, images/s per epoch "
      f"{[round(r, 1) for r in rates]} (the first includes compilation), "
      f"final loss {m['final_train_loss']:.3f}, {sys.argv[3]} s with validation")
PY
done

first=$(echo $XLA | cut -d' ' -f1)
echo "== export + parity (XLA $first run)"
rm -rf "$OUT/export"
"$PY" -m tfmarket.export --workdir "$OUT/xla_$first" --onnx --out "$OUT/export"
echo "== rank with onnxruntime"
"$PY" -m tfmarket.rank --model "$OUT/export/model.onnx" --data "$OUT/xla_$first/synthetic" \
  --out "$OUT/rank"
echo "gpu_check finished in $(( SECONDS - start )) s"
