#!/usr/bin/env bash
# Every GPU measurement of the performance targets in one call, on a random-weight model of a real
# shape (no weights to download): the AIE, FFV steps and composition scoring against their FLOP
# floors (benchmarks/gpu.py --shape), then the whole default study (benchmarks/pipeline.py).
#
#   bash benchmarks/gpu_session.sh                     # llama3-8b, bfloat16, cuda
#   SHAPE=qwen3-0.6b DEVICE=cpu DTYPE=float32 GPU_ARGS="--layers 1 --vocab 2048" \
#       PIPELINE_ARGS="model.layers=1 debug=fast" bash benchmarks/gpu_session.sh   # the script, anywhere
#
# A GPU image without fvtrain's stack: put wheels in .whl/ (hydra-core, omegaconf,
# antlr4-python3-runtime, transformers; README "Benchmarks") and a tokenizer folder in .tok/
# (the embedded Gemma tokenizer, save_pretrained): both are used when present.
set -euo pipefail
cd "$(dirname "$0")/.."
SHAPE=${SHAPE:-llama3-8b}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fvtrain-site .whl/*.whl
    export PYTHONPATH=/tmp/fvtrain-site${PYTHONPATH:+:$PYTHONPATH}
fi
TOKENIZER=()
if [ -d .tok ]; then TOKENIZER=(model.tokenizer="$PWD/.tok"); fi
export PYTHONUNBUFFERED=1
if [ "$DEVICE" != cpu ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; fi
# Both run even if one fails; logs go to $OUT (the device's returned folder) or a temporary
# folder, and both results are printed again at the end, where a truncated output keeps them.
LOGS=${OUT:-$(mktemp -d)}
set +e
# shellcheck disable=SC2086  # GPU_ARGS and PIPELINE_ARGS are word lists
"$PY" benchmarks/gpu.py --shape "$SHAPE" --dtype "$DTYPE" --device "$DEVICE" --max-rows auto ${GPU_ARGS:-} \
    2>&1 | tee "$LOGS/gpu.log"
rc_gpu=${PIPESTATUS[0]}
# shellcheck disable=SC2086
"$PY" benchmarks/pipeline.py model=shape model.name="shape-$SHAPE" model.dtype="$DTYPE" model.device="$DEVICE" \
    "${TOKENIZER[@]}" ${PIPELINE_ARGS:-} > "$LOGS/pipeline.log" 2>&1
rc_pipeline=$?
echo "=== benchmarks/gpu.py (exit $rc_gpu) ==="
grep -v "Loading weights" "$LOGS/gpu.log" | tail -40
echo "=== benchmarks/pipeline.py (exit $rc_pipeline; whole log: $LOGS/pipeline.log) ==="
tail -12 "$LOGS/pipeline.log"
exit $(( rc_gpu > rc_pipeline ? rc_gpu : rc_pipeline ))
