#!/usr/bin/env bash
# The whole pipeline on a CPU in a few minutes: real text -> SentencePiece tokenizer -> .bin/.idx -> a small Llama
# trained with tensor parallel 2 x pipeline parallel 2 (4 gloo processes under CPU emulation), validation loss,
# checkpoint and tensorboard events. Everything lands in runs/demo/ (override with DEMO_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
export PYTHONWARNINGS=ignore
OUT=${DEMO_DIR:-runs/demo}
ITERS=${DEMO_ITERS:-300}
mkdir -p "$OUT"

KJV=$(python -c "import importlib.util, os; s = importlib.util.find_spec('bible'); print(os.path.join(os.path.dirname(s.origin), 'data', 'kjv.jsonl'))")
echo "== corpus: King James Bible, $(wc -l < "$KJV") verses ($KJV)"

echo "== tokenizer: SentencePiece BPE, 4096 pieces, split digits, byte fallback"
megatron-llm tokenizer train --input "$KJV" --json-keys text --output-prefix "$OUT/tokenizer/kjv" --vocab-size 4096

echo "== preprocess: .jsonl -> .bin/.idx"
megatron-llm preprocess --input "$KJV" --json-keys text --output-prefix "$OUT/data/kjv" \
  --tokenizer-type SentencePieceTokenizer --tokenizer-model "$OUT/tokenizer/kjv.model" --append-eod --workers 2

echo "== train: TP2 x PP2 on 4 CPU processes"
rm -rf "$OUT/checkpoints" "$OUT/tensorboard"
megatron-llm train --device cpu --nproc-per-node 4 \
  --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 \
  --num-layers 4 --hidden-size 128 --num-attention-heads 4 --num-query-groups 2 --ffn-hidden-size 384 \
  --seq-length 128 --max-position-embeddings 128 \
  --tokenizer-type SentencePieceTokenizer --tokenizer-model "$OUT/tokenizer/kjv.model" \
  --data-path "$OUT/data/kjv_text_document" --split 98,2,0 \
  --micro-batch-size 4 --global-batch-size 16 --train-iters "$ITERS" \
  --lr 3e-3 --min-lr 3e-4 --lr-warmup-iters 20 --lr-decay-style cosine --weight-decay 0.1 --clip-grad 1.0 \
  --eval-interval 50 --eval-iters 4 --log-interval 10 \
  --save "$OUT/checkpoints" --save-interval 100 --tensorboard-dir "$OUT/tensorboard"

python - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
recs = [json.loads(l) for l in open(os.path.join(out, "tensorboard", "metrics.jsonl"))]
val = [(r["iteration"], r["val_loss"]) for r in recs if "val_loss" in r]
print("== validation loss by iteration: " + ", ".join(f"{i}: {v:.3f}" for i, v in val))
assert val[-1][1] < val[0][1] - 0.3, "validation loss did not fall clearly"
print(f"== checkpoints:  {os.path.abspath(os.path.join(out, 'checkpoints'))}")
print(f"== tensorboard:  tensorboard --logdir {os.path.abspath(os.path.join(out, 'tensorboard'))}")
PY
