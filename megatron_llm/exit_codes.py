"""Exit statuses shared by the trainer and the launchers (a Slurm script or `megatron-llm train` acts on them).
A module of its own, importing nothing, so that launch/ can read them without importing training/ or torch."""

EXIT_CODE_REQUEUE = 75  # EX_TEMPFAIL: a checkpoint was saved on SIGUSR1/SIGTERM; requeue and resume from it
EXIT_CODE_NAN = 3  # the loss became NaN/Inf; nothing saved after it (resume from the last good checkpoint)
EXIT_CODE_CONFIG = 2  # a configuration (or checkpoint) that cannot run; the message names the flag to change
