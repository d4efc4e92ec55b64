"""torchrun for one node of a Slurm job: `python -m megatron_llm.launch.slurm_torchrun <torchrun arguments>`.

The same as torchrun except that it ignores SIGUSR1. Slurm delivers a step's signals to every process of the step,
so the time-limit warning reaches the ranks directly; torchrun itself must only survive it. Left alone, SIGUSR1's
default action ends torchrun (and before torchrun has started its workers it installs no handler at all), which
orphans ranks that Slurm's process tracking may then never stop. Ranks start with SIGUSR1 ignored and the trainer
installs its own handler as its first act (training/signals.py).
"""

from __future__ import annotations

import signal


def main() -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    from torch.distributed.run import main as torchrun

    torchrun()  # reads sys.argv like the torchrun command


if __name__ == "__main__":
    main()
