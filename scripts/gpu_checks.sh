#!/usr/bin/env bash
# Everything we check on a lent GPU (an H200 since 2026-12), in ONE call of at most 10 minutes, most important first.
# Every step writes its logs and results under $RUN_DIR (default runs/gpu_checks). At most 8 files come back from
# the device tool's $OUT, so when OUT is set the script puts two there, rewritten (atomically) as soon as each step
# ends, so that a call cut short still brings back what finished: summary.txt (a line per step: rc, seconds) and
# gpu_checks.tar.gz (all of $RUN_DIR; files over 8 MiB left out, named in its left_out.txt). Steps:
#   (a) JIT build of csrc/ + the op tests against the CPU/torch references in bf16 (tests/gpu/test_ops*.py)
#   (b) 20 training iterations, fused spec vs local spec, same data: losses within bf16 tolerance
#   (c) the 1.1B benchmark: fused, megatron-core local, HF eager (bench/train_throughput.py); a profile of the
#       fused step (megatron-llm profile: time per part, GPU idle time, kernel time by family, top kernels)
#   (d) the CUDA training and profiler tests (tests/gpu, except the op tests of (a))
#   (e) if time is left: (c) at 8 micro-batches per step, HF compiled baseline, per-op microbenchmarks (ours / eager /
#       torch.compile)
#   (f) planner memory model vs measured peak memory, plan --calibrate, topo (issue 14)
#   (g) lightning attention bf16 vs reference, TransNormer vs Llama tokens/s by sequence length (issue 16)
# A 10-minute call reaches (f)/(g) only when the earlier steps are quick: run them in a second call with STEPS=fg
# (STEPS lists the step letters to run; default all). DRY_RUN=1 runs nothing: each step's command line goes to
# $RUN_DIR/commands.txt (name, tab, the command shell-quoted), which tests/unit/test_gpu_checks_commands.py
# checks on CPU.
#
# megatron-core: the device image has torch but not megatron-core. When it does not import, the script installs the
# wheel in $WHEEL_DIR (default .whl/, git-ignored) that fits the interpreter, into a directory outside the checkout.
# Download it here for the interpreters the image may have, then carry .whl (device tool: carry [".whl"]) and run
#   OUT=$OUT BUDGET_S=560 bash scripts/gpu_checks.sh
# for v in 3.12 3.13; do python3 -m pip download --no-deps --only-binary=:all: --python-version $v --implementation cp \
#   --platform manylinux_2_28_x86_64 -d .whl megatron-core==0.16.1; done
set -uo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-runs/gpu_checks}
OUT=${OUT:-}
BUDGET_S=${BUDGET_S:-560}  # leave the device call's own limit (600 s) some slack for copying $OUT back
START=$(date +%s)
DRY=${DRY_RUN:+1}
# a previous run's files are kept beside, not mixed into this run's results
if [[ -z $DRY && -d $RUN_DIR && -n "$(ls -A "$RUN_DIR")" ]]; then mv "$RUN_DIR" "$RUN_DIR.prev-$START"; fi
mkdir -p "$RUN_DIR"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
# the steps say `python`; an image may name its interpreter python3 only
if [[ -z $DRY ]] && ! command -v python > /dev/null && command -v python3 > /dev/null; then
  SHIM=$(mktemp -d) && ln -s "$(command -v python3)" "$SHIM/python" && export PATH=$SHIM:$PATH
fi
# pack: RUN_DIR -> $OUT/gpu_checks.tar.gz and $OUT/summary.txt, each written to a temporary name, then renamed
pack() {
  [[ -n $OUT && -z $DRY ]] || return 0
  mkdir -p "$OUT"
  local parent base
  parent=$(dirname "$RUN_DIR"); base=$(basename "$RUN_DIR")
  # a file too big to come back is named, not dropped silently
  local big="+$(( 8 << 20 ))c"
  (cd "$parent" && find "$base" -type f -size "$big" ! -name left_out.txt > "$base/left_out.txt" &&
    find "$base" -type f ! -size "$big" -print0 | tar -czf - --null -T -) > "$OUT/gpu_checks.tar.gz.partial" &&
    mv -f "$OUT/gpu_checks.tar.gz.partial" "$OUT/gpu_checks.tar.gz"
  if [[ -f $RUN_DIR/summary.txt ]]; then
    cp "$RUN_DIR/summary.txt" "$OUT/summary.txt.partial" && mv -f "$OUT/summary.txt.partial" "$OUT/summary.txt"
  fi
}

# megatron-core from the carried wheels when the image lacks it (pip picks the one built for this interpreter)
WHEEL_DIR=${WHEEL_DIR:-.whl}
if [[ -z $DRY ]] && ! python -c "import megatron.core" > /dev/null 2>&1 && compgen -G "$WHEEL_DIR/megatron_core-*.whl" > /dev/null
then
  SITE=$(mktemp -d "${TMPDIR:-/tmp}/gpu_checks_site.XXXXXX")
  python -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --find-links "$WHEEL_DIR" \
    --target "$SITE" megatron-core && export PYTHONPATH=$SITE:$PYTHONPATH
fi

if [[ -n $DRY ]]; then
  : > "$RUN_DIR/commands.txt"
else
  : > "$RUN_DIR/summary.txt"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee "$RUN_DIR/gpu.txt"
  python -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuDNN',
torch.backends.cudnn.version())" | tee -a "$RUN_DIR/gpu.txt"
  # what the JIT build compiles with and what the HF baselines run on
  { nvcc --version | tail -n 1; python -c "import transformers; print('transformers', transformers.__version__)"; } \
    >> "$RUN_DIR/gpu.txt" 2>&1
  # which megatron-core the steps import; where none does, summary.txt says so first (every step but (a) needs it)
  if ! python -c "import megatron.core as m; print('megatron-core', m.__version__, 'from', m.__path__[0])" \
      2>&1 | tee -a "$RUN_DIR/gpu.txt"; then
    echo "megatron-core: does not import; put its wheel for this python in $WHEEL_DIR/ (see the head of" \
      "scripts/gpu_checks.sh)" | tee -a "$RUN_DIR/summary.txt"
  fi
  pack
fi

# step NAME MAX_SECONDS CMD...: runs CMD with its output in $RUN_DIR/NAME.log, limited to MAX_SECONDS and to what is
# left of BUDGET_S; skipped (and said so) when under 20 s of the budget are left. Records NAME: rc and seconds in
# summary.txt.
step() {
  local name=$1 max=$2; shift 2
  if [[ -n "${STEPS:-}" && "$STEPS" != *"${name:0:1}"* ]]; then return; fi  # STEPS=fg: only those steps
  if [[ -n $DRY ]]; then printf '%s\t%s\n' "$name" "$(printf '%q ' "$@")" >> "$RUN_DIR/commands.txt"; return; fi
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  local limit=$(( max < left ? max : left ))
  if (( left < 20 )); then
    echo "$name: skipped (${left}s of the budget left)" | tee -a "$RUN_DIR/summary.txt"; pack; return
  fi
  echo "== $name (limit ${limit}s)" | tee "$RUN_DIR/$name.log"
  local t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" >> "$RUN_DIR/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc ($(( $(date +%s) - t0 ))s)" | tee -a "$RUN_DIR/summary.txt"
  tail -n 25 "$RUN_DIR/$name.log"
  pack
}

# (a) JIT build + op tests in bf16
OP_TESTS=$(ls tests/gpu/test_ops*.py 2>/dev/null)
if [[ -n "$OP_TESTS" ]]; then
  step a_ops 150 python -m pytest -q -p no:cacheprovider $OP_TESTS
else
  echo "a_ops: no tests/gpu/test_ops*.py in this checkout" | tee -a "$RUN_DIR/summary.txt"
fi
[[ -n $DRY ]] || python -m megatron_llm.cli ops > "$RUN_DIR/a_ops_status.txt" 2>&1 || true

# (b) fused vs local, 20 bf16 iterations on the 1.1B layer shape (4 layers to keep it short), same mock data
SHAPE=(--recipe tinyllama-1.1b --num-layers 4 --mock-data --tokenizer-type NullTokenizer --bf16 --eval-interval 0
       --lr-warmup-iters 0 --micro-batch-size 4 --global-batch-size 8 --train-iters 20 --device cuda
       --nproc-per-node 1 --seed 1234)
# local = megatron-core's modules unfused (the reference; its own fusions need the extension modules of (a))
step b_local 100 python -m megatron_llm.cli train "${SHAPE[@]}" --transformer-impl local --no-masked-softmax-fusion \
  --no-bias-swiglu-fusion --no-gradient-accumulation-fusion --tensorboard-dir "$RUN_DIR/b_local/tb"
step b_fused 100 python -m megatron_llm.cli train "${SHAPE[@]}" --transformer-impl fused --cross-entropy-loss-fusion \
  --tensorboard-dir "$RUN_DIR/b_fused/tb"
step b_compare 20 python - "$RUN_DIR" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests/distributed")
from trainrun import losses, max_rel_diff
out = Path(sys.argv[1])
a, b = losses(out / "b_fused"), losses(out / "b_local")
diff = max_rel_diff(a, b)
print("fused:", [round(a[k], 4) for k in sorted(a)])
print("local:", [round(b[k], 4) for k in sorted(b)])
print(f"max relative difference over {len(a)} iterations: {diff:.3e} (bf16 tolerance 2e-2)")
sys.exit(0 if len(a) == 20 and diff <= 2e-2 else 1)
EOF

# (c) the 1.1B benchmark: fused, local, HF eager
step c_bench 240 python bench/train_throughput.py --stacks fused,local,hf-eager --no-ops --no-compile \
  --json "$RUN_DIR/c_bench.json"
# where the fused step's time goes, on the same shape: per-part timers, NVML telemetry, GPU idle time, kernel time by
# family and the top kernels of one traced iteration (attention backend included), in c_profile/report.md
step c_profile 120 python -m megatron_llm.cli profile --recipe tinyllama-1.1b --bf16 --device cuda --nproc-per-node 1 \
  --mock-data --tokenizer-type NullTokenizer --lr-warmup-iters 0 --micro-batch-size 4 --global-batch-size 4 \
  --transformer-impl fused --cross-entropy-loss-fusion --warmup-iters 2 --profile-iters 4 --trace-iters 6:6 \
  --report-dir "$RUN_DIR/c_profile"

# (d) CUDA training and profiler tests
GPU_TESTS=$(ls tests/gpu/test_*.py | grep -v -e '/test_ops' -e '/test_linear_attention')
step d_gpu_tests 120 python -m pytest -q -p no:cacheprovider $GPU_TESTS

# (e) the same with 8 micro-batches per optimizer step (a real run's gradient accumulation amortises the
# optimizer), then the compiled baseline + op microbenchmarks
step e_bench_accum 150 python bench/train_throughput.py --stacks fused,hf-eager --micro-batches 8 --no-ops \
  --no-compile --json "$RUN_DIR/e_bench_accum.json"
step e_bench_compiled 200 python bench/train_throughput.py --stacks hf-compiled --ops --compile \
  --json "$RUN_DIR/e_bench.json"

# (f) issue 14: planner memory model vs measured peak memory (tinyllama-1.1b at MBS 1/2/4, with and without full
# recompute, within 10%), plan --calibrate on this GPU, and this machine's topology as a fixture candidate
step f_planner_memory 240 python bench/planner_memory_gpu.py --out "$RUN_DIR/planner_memory"
step f_calibrate 60 env MEGATRON_LLM_HOME="$RUN_DIR" python -m megatron_llm.cli plan --calibrate
[[ -n $DRY ]] || nvidia-smi topo -m > "$RUN_DIR/nvidia_smi_topo.txt" 2>&1
step f_topo 30 sh -c "python -m megatron_llm.cli topo && python -m megatron_llm.cli topo --json > '$RUN_DIR/topo.json'"

# (g) issue 16: lightning attention in bf16 vs the reference; TransNormer vs Llama tokens/s at seq 2k/8k/32k
step g_linear_attention 90 python -m pytest -q -p no:cacheprovider tests/gpu/test_linear_attention_gpu.py
step g_transnormer_bench 240 python bench/transnormer_throughput.py --iters 6 --out "$RUN_DIR/transnormer_throughput.md"

[[ -n $DRY ]] || echo "total $(( $(date +%s) - START ))s" | tee -a "$RUN_DIR/summary.txt"
pack
