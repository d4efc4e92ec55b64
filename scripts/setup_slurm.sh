#!/usr/bin/env bash
# Install Slurm from Debian's packages for the Slurm tests (tests/slurm start their own one-machine cluster with a
# config they write; nothing is started or configured here). Needs root (CI runs as root). Idempotent.
set -euo pipefail
if command -v sbatch >/dev/null && [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ]; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q slurmctld slurmd slurm-client >/dev/null 2>&1 || {
  apt-get update -q >/dev/null && apt-get install -y -q slurmctld slurmd slurm-client >/dev/null
}
sbatch --version >/dev/null 2>&1 || command -v sbatch >/dev/null
