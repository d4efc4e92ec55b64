"""What the train and profile verbs do before any rank starts: shapes, then the input files, once per job."""

from __future__ import annotations

import os

from megatron_llm.config.arguments import validate
from megatron_llm.config.training import RunConfig
from megatron_llm.data.input_checks import check_input_files
from megatron_llm.launch.local import launched_externally


def job_world_size(cfg: RunConfig) -> int:
    return int(os.environ["WORLD_SIZE"]) if launched_externally() else cfg.launch.nproc_per_node


def check_job(cfg: RunConfig) -> None:
    """Raise ConfigError for a configuration that cannot run. The files are read by the process the user ran or,
    when a launcher made every process a rank (srun, torchrun), by rank 0 alone: a thousand ranks reading every
    .idx on a shared file system at start-up is a storm, and one refusal stops the job (the launcher ends the
    others)."""
    world = job_world_size(cfg)
    validate(cfg, world)
    if not launched_externally() or int(os.environ.get("RANK", "0")) == 0:
        check_input_files(cfg, world)
