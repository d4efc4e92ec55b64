"""--async-save: checkpoints written in the background while training goes on (megatron-core's AsyncCallsQueue).

The shards go to iter_N.tmp from a forked writer (a copy-on-write snapshot of the state at the save iteration; on
a GPU megatron-core first copies the tensors to host memory). Publishing (rename to iter_N, tracker, --keep-last)
is the request's finalize step: megatron-core runs it only once every rank's writer has finished (its
is-done check is a collective), so `latest` never names a checkpoint some rank has not written. We ask at log
boundaries (beside the health exchange, not per step), before the next save (one in flight at a time), and at the
end of training, where we wait.
"""

from __future__ import annotations


class AsyncCheckpointer:
    def __init__(self, enabled: bool) -> None:
        self.queue = None
        if enabled:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self.queue = AsyncCallsQueue(persistent=False)

    def save(self, cfg, model, optimizer, scheduler, iteration: int, consumed: int, **kwargs) -> None:
        """checkpointing.save (kwargs passed on), in the background with --async-save."""
        from megatron_llm.training import checkpointing

        if self.queue is not None:
            self.queue.maybe_finalize_async_calls(blocking=True)  # the previous save first
        checkpointing.save(cfg, model, optimizer, scheduler, iteration, consumed, async_queue=self.queue, **kwargs)

    def poll(self) -> None:
        """Collective: publish the saves every rank has finished writing."""
        if self.queue is not None and self.queue.get_num_unfinalized_calls():
            self.queue.maybe_finalize_async_calls(blocking=False)

    def close(self) -> None:
        """Collective: wait for and publish every save still in flight."""
        if self.queue is not None:
            self.queue.maybe_finalize_async_calls(blocking=True)
            self.queue.close()
