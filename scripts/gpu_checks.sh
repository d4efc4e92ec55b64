#!/usr/bin/env bash
# What we run on a GPU machine (the lent H100): the CUDA tests, the tinyllama-1.1b shape at TP1 for 20 bf16
# iterations with NCCL, and the profiler on the same shape. Results go to $OUT (default runs/gpu_checks).
# Expects megatron-core importable. On the lent device (torch present, megatron-core not): download the cp312 wheel
# here into the git-ignored .whl/ (python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12
# --implementation cp --platform manylinux_2_28_x86_64 -d .whl megatron-core==0.16.1), carry .whl and run
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site &&
#   OUT=$OUT bash scripts/gpu_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee "$OUT/gpu.txt"
TINYLLAMA=(--recipe tinyllama-1.1b --mock-data --tokenizer-type NullTokenizer --bf16 --eval-interval 0
           --lr-warmup-iters 0)

echo "== pytest tests/gpu" | tee "$OUT/pytest.log"
python -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tail -n 40 | tee -a "$OUT/pytest.log"

echo "== train: tinyllama-1.1b shape, TP1, MBS 2, GBS 8, 20 iterations, bf16, NCCL" | tee "$OUT/train.log"
python -m megatron_llm.cli train --device cuda --nproc-per-node 1 "${TINYLLAMA[@]}" \
  --micro-batch-size 2 --global-batch-size 8 --train-iters 20 --tensorboard-dir "$OUT/train_tb" 2>&1 \
  | grep -v -i "warn" | tee -a "$OUT/train.log" | grep -E "iteration|MFU against|Error|error" | cut -c1-400

echo "== profile: same shape, 3 warm-up + 10 measured iterations" | tee "$OUT/profile.log"
python -m megatron_llm.cli profile --device cuda --nproc-per-node 1 "${TINYLLAMA[@]}" \
  --micro-batch-size 2 --global-batch-size 8 --warmup-iters 3 --profile-iters 10 --report-dir "$OUT/report" 2>&1 \
  | grep -v -i "warn" >> "$OUT/profile.log"
tail -n 5 "$OUT/profile.log"
cat "$OUT/report/report.md" 2>/dev/null | head -n 60

# ---------------------------------------------------------------------------------------------------------------
# Step (issue 14): planner memory model vs measured peak memory, tinyllama-1.1b at MBS 1/2/4, with and without
# full recomputation (within 10%); table in $OUT/planner_memory.log, rows in $OUT/planner_memory/planner_memory.json.
echo "== planner memory: predicted vs measured peak (bench/planner_memory_gpu.py)" | tee "$OUT/planner_memory.log"
python bench/planner_memory_gpu.py --out "$OUT/planner_memory" 2>&1 | grep -v -i "warn" | tee -a "$OUT/planner_memory.log"
echo "== planner calibration on this GPU (plan --calibrate)" | tee -a "$OUT/planner_memory.log"
MEGATRON_LLM_HOME="$OUT" python -m megatron_llm.cli plan --calibrate 2>&1 | tee -a "$OUT/planner_memory.log"
echo "== topology of this machine (megatron-llm topo; nvidia-smi topo -m kept as a fixture candidate)" | tee "$OUT/topo.log"
nvidia-smi topo -m > "$OUT/nvidia_smi_topo.txt" 2>&1
python -m megatron_llm.cli topo 2>&1 | tee -a "$OUT/topo.log"
python -m megatron_llm.cli topo --json > "$OUT/topo.json" 2>>"$OUT/topo.log"

# ---- issue 16: TransNormerLLM (lightning attention) ----
echo "== transnormer: lightning attention bf16 vs reference (tests/gpu/test_linear_attention_gpu.py)" \
  | tee "$OUT/transnormer.log"
python -m pytest -q -p no:cacheprovider tests/gpu/test_linear_attention_gpu.py 2>&1 | tail -n 5 \
  | tee -a "$OUT/transnormer.log"
echo "== transnormer vs llama tokens/s at seq 2k/8k/32k (bench/transnormer_throughput.py)" | tee -a "$OUT/transnormer.log"
python bench/transnormer_throughput.py --iters 6 --out "$OUT/transnormer_throughput.md" 2>&1 | tail -n 6 \
  | tee -a "$OUT/transnormer.log"
