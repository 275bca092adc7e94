#!/usr/bin/env bash
# The prepared accelerator check: one short run on a lent GPU machine (CI never has one).
#
#   bash bench/device_check.sh fetch   # here, once: the pinned packages the GPU machine's image
#                                      # lacks, as Python 3.12 wheels, into .whl/ (git-ignored;
#                                      # that machine reaches no package index)
#   bash bench/device_check.sh         # there: one device `run` call, carry [".whl"], timeout_s 540
#
# Steps, each bounded, logged to $OUT/device_check.log (and $OUT/device_smoke.json):
#   1. the machine: GPU, torch, the library versions in use;
#   2. bench/device_smoke.py: LoRA training steps through the worker's recipe (bf16 on CUDA),
#      generation through the inference registry and engine, eval scoring against a manual
#      forward, all on the GPU;
#   3. bench/eval_bench.py --device cuda: the evaluation speed goal (>= 3x at batch 8), measured
#      where batching can pay off.
# On a machine without CUDA it runs steps 2 and 3 on the CPU (DEVICE=cpu), which is how it is
# tried here before spending device time.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

# Packages the project pins that the GPU image lacks or has at other versions (transformers 5,
# huggingface_hub 1.x there); versions come from requirements.lock.
WHEELS="transformers tokenizers huggingface-hub trl peft datasets dill multiprocess googleapis-common-protos protobuf"

if [ "${1:-}" = "fetch" ]; then
  pins=$("$PY" - "$WHEELS" <<'EOF'
import re, sys
want = {re.sub(r"[-_.]+", "-", n).lower() for n in sys.argv[1].split()}
for line in open("requirements.lock", encoding="utf-8"):
    name = re.split(r"[=<>;\[ ]", line.strip(), 1)[0]
    if re.sub(r"[-_.]+", "-", name).lower() in want:
        print(line.strip())
EOF
)
  rm -rf .whl && mkdir -p .whl
  # shellcheck disable=SC2086
  exec "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $pins
fi

OUT="${OUT:-/tmp/device-check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 OUT
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "device_check: installing the carried wheels failed"; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
DEVICE="${DEVICE:-$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
rc=0
{  # a subshell (it is piped): its exit status is rc

  echo "== 1. machine ($(date -u +%FT%TZ))"
  nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import sys, torch, transformers, trl, peft; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.cuda.is_available(), '| transformers', transformers.__version__, '| trl', trl.__version__, '| peft', peft.__version__)"
  echo "== 2. device smoke (train, generate, score) on $DEVICE"
  timeout 240 "$PY" bench/device_smoke.py || rc=1
  echo "== 3. eval bench on $DEVICE"
  timeout 240 "$PY" bench/eval_bench.py --device "$DEVICE" --rows 200 --repeats 3 || rc=1
  echo "== done: rc=$rc"
  exit "$rc"
} 2>&1 | tee "$OUT/device_check.log"
exit "${PIPESTATUS[0]}"
