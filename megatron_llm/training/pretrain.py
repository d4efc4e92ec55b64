"""The training job, top to bottom: initialise, build, (resume), loop, evaluate, checkpoint, log."""

from __future__ import annotations

import math
import os
import time
from functools import partial
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from megatron_llm.config.training import RunConfig
from megatron_llm.exit_codes import EXIT_CODE_NAN, EXIT_CODE_REQUEUE
from megatron_llm.training.callbacks import TrainCallback, TrainContext


def _build_tokenizer(cfg: RunConfig):
    from megatron_llm.data.tokenizers import build_tokenizer

    d = cfg.data
    return build_tokenizer(d.tokenizer_type, tokenizer_model=d.tokenizer_model, vocab_size=cfg.model.vocab_size)


def resolve_vocab_size(cfg: RunConfig, tokenizer) -> int:
    """The model's (unpadded) vocabulary. A --vocab-size smaller than the tokenizer's would index past the
    embedding table (Megatron-LM users see NaNs/crashes for this): refuse it here."""
    if cfg.model.vocab_size and cfg.model.vocab_size < tokenizer.vocab_size:
        from megatron_llm.config.arguments import ConfigError

        raise ConfigError(f"--vocab-size {cfg.model.vocab_size} is smaller than the tokenizer's vocabulary "
                          f"({tokenizer.vocab_size}); drop --vocab-size or use the matching tokenizer")
    return int(cfg.model.vocab_size or tokenizer.vocab_size)


def build_model_and_optimizer(cfg: RunConfig, info, vocab_size: int, timers=None):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron_llm.models.init import init_weights
    from megatron_llm.models.build import build_model_chunks, transformer_config
    from megatron_llm.models.llama import padded_vocab_size

    tc = transformer_config(cfg, info.device, timers=timers)
    padded = padded_vocab_size(vocab_size, info.tp, cfg.model.make_vocab_size_divisible_by)
    chunks = build_model_chunks(cfg, tc, padded, real_vocab_size=vocab_size)
    init_weights(chunks, cfg.train.seed, cfg.model.init_method_std, cfg.model.num_layers, vocab_size=vocab_size)
    if info.device == "cuda":
        chunks = [c.cuda(torch.cuda.current_device()) for c in chunks]
    p, o = cfg.parallel, cfg.optim
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=o.bf16 or o.fp16,
        overlap_grad_reduce=bool(p.overlap_grad_reduce),
        overlap_param_gather=bool(p.overlap_param_gather),
        use_distributed_optimizer=p.use_distributed_optimizer,
        bucket_size=p.ddp_bucket_size,
        average_in_collective=False,
    )
    model = [
        DistributedDataParallel(config=tc, ddp_config=ddp_config, module=c,
                                # Later chunks reduce in one bucket each (Megatron-LM's choice for interleaving).
                                disable_bucketing=i > 0)
        for i, c in enumerate(chunks)
    ]
    opt_config = OptimizerConfig(
        optimizer=o.optimizer, lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps,
        clip_grad=o.clip_grad, bf16=o.bf16, fp16=o.fp16, params_dtype=tc.params_dtype,
        loss_scale=o.loss_scale, initial_loss_scale=o.initial_loss_scale,
        use_distributed_optimizer=p.use_distributed_optimizer,
        overlap_param_gather_with_optimizer_step=False,
        timers=timers,
    )
    from megatron_llm.training.optimizer import install_multi_tensor_ops, use_fused_adamw

    install_multi_tensor_ops()  # grad norm of all tensors at once, read once per step
    optimizer = get_megatron_optimizer(opt_config, model)
    use_fused_adamw(optimizer, info.device)
    from megatron_llm.training.grad_finalize import finalize_model_grads

    # The schedules call these hooks; same wiring as Megatron-LM's training.py (finalize without a host read).
    tc.finalize_model_grads_func = finalize_model_grads
    tc.grad_scale_func = optimizer.scale_loss
    if o.fp16:
        from megatron.core.num_microbatches_calculator import get_num_microbatches

        _fp16_per_token_loss_in_range(tc, optimizer, finalize_model_grads,
                                      cfg.data.micro_batch_size * cfg.data.seq_length * get_num_microbatches())
    if p.overlap_grad_reduce:
        tc.no_sync_func = [m.no_sync for m in model] if len(model) > 1 else model[0].no_sync
        tc.grad_sync_func = ([m.start_grad_sync for m in model] if len(model) > 1
                             else model[0].start_grad_sync)
    if p.overlap_param_gather and p.use_distributed_optimizer:
        tc.param_sync_func = ([m.start_param_sync for m in model] if len(model) > 1
                              else model[0].start_param_sync)
    return tc, model, optimizer, padded


def _fp16_per_token_loss_in_range(tc, optimizer, finalize, tokens: int) -> None:
    """With per-token loss the backward starts from a sum over tokens, not a mean; times fp16's loss scale that
    overflows (the first steps would all be skipped). Start it from sum / tokens and count tokens / tokens:
    finalize_model_grads divides by the count, so the gradient is the same."""
    tc.grad_scale_func = lambda loss: optimizer.scale_loss(loss) / tokens

    def finalize_scaled(model, num_tokens=None, **kwargs):
        return finalize(model, None if num_tokens is None else num_tokens.float() / tokens, **kwargs)

    tc.finalize_model_grads_func = finalize_scaled


def build_scheduler(cfg: RunConfig, optimizer, global_batch_size: int):
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o, t = cfg.optim, cfg.train
    decay_iters = o.lr_decay_iters or t.train_iters
    # Steps are counted in samples, so a resumed run with a different micro-batch layout stays on schedule.
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if o.lr_warmup_iters else o.lr,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=o.lr_warmup_iters * global_batch_size,
        lr_decay_steps=decay_iters * global_batch_size,
        lr_decay_style=o.lr_decay_style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=t.train_iters * global_batch_size,
        wd_incr_style="constant",
    )


def _loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Sum of token losses and the token count. With calculate_per_token_loss (models/llama.py) the schedule does
    not divide per micro-batch: finalize_model_grads divides the gradients by the token count of the whole global
    batch, so the gradient is that of the token-weighted mean loss, the same mean as the log's [sum, count]."""
    losses = output_tensor.float().view(-1)
    mask = loss_mask.view(-1).float()
    loss_sum = torch.sum(losses * mask)
    num_tokens = mask.sum().to(torch.int)
    return loss_sum, num_tokens, {"lm loss": torch.stack([loss_sum.detach(), mask.sum()])}


def _forward_step(device: str, data_iterator, model):
    batch = next(data_iterator) if data_iterator is not None else None
    if batch is None:  # a middle pipeline stage: activations come from the previous stage
        output = model(None, None, None)
        return output, None
    dev = torch.device(device if device == "cpu" else f"cuda:{torch.cuda.current_device()}")
    tokens = batch["tokens"].to(dev, non_blocking=True)
    labels = batch["labels"].to(dev, non_blocking=True)
    loss_mask = batch["loss_mask"].to(dev, non_blocking=True)
    position_ids = batch["position_ids"].to(dev, non_blocking=True)
    output = model(tokens, position_ids, None, labels=labels)
    return output, partial(_loss_func, loss_mask)


def _reduce_loss(losses: List[Dict[str, torch.Tensor]], device: str) -> Optional[float]:
    """Token-weighted mean of the micro-batch losses of this step, over all data-parallel ranks."""
    from megatron.core import parallel_state

    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    total = torch.zeros(2, dtype=torch.float64)
    for entry in losses:
        total += entry["lm loss"].double().cpu()
    if device == "cuda":
        total = total.cuda()
    dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
    return float(total[0] / torch.clamp(total[1], min=1))


def _local_loss(losses: List[Dict[str, torch.Tensor]]) -> Optional[torch.Tensor]:
    """This rank's [loss sum, token count] of the step, left on the device (read once per log interval)."""
    from megatron.core import parallel_state

    if not losses or not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    return torch.stack([entry["lm loss"] for entry in losses]).double().sum(0)


class _Interval:
    """Host-side figures of the iterations since the last log boundary."""

    def __init__(self) -> None:
        self.times: List[float] = []
        self.skipped = 0

    def add(self, step_time: float, outcome) -> None:
        self.times.append(step_time)
        self.skipped += int(not outcome.updated)

    def summary(self, report) -> Dict[str, Any]:
        losses = list(report.losses.values())
        return {
            "lm_loss": sum(losses) / len(losses) if losses else None,  # Megatron-LM logs the interval mean
            "iteration_time_s": sum(self.times) / len(self.times),
            "skipped": self.skipped,
            "mem_gb": report.mem_gb_max,
            "step_time_max_s": max(report.step_time_s),
            "stragglers": len(report.stragglers),
        }


SAMPLE_LOG_ENV = "MEGATRON_LLM_TEST_SAMPLE_LOG"  # test hook: record the samples each rank trains on


def _recorded(batches, prefix: str):
    """Append 'position crc32-of-tokens' per sample drawn to PREFIX.<pid> (sample-accounting tests)."""
    import zlib

    with open(f"{prefix}.{os.getpid()}", "a") as f:
        for batch in batches:
            for pos, toks in zip(batch["sample_position"].tolist(), batch["tokens"]):
                f.write(f"{pos} {zlib.crc32(toks.numpy().tobytes())}\n")
            f.flush()
            yield batch


class _DataIterators:
    """Iterators per model chunk: chunks holding the first layers read tokens, the last stage reads labels;
    middle chunks get None (their input arrives over pipeline p2p)."""

    def __init__(self, dataset, consumed: int, cfg: RunConfig, num_chunks: int, record: bool = True):
        from megatron.core import parallel_state

        from megatron_llm.data.gpt_datasets import micro_batches

        cuda = torch.cuda.is_available() and cfg.launch.device != "cpu"
        num_workers = cfg.data.num_workers if cfg.data.num_workers is not None else (2 if cuda else 0)
        self.per_chunk = []
        for i in range(num_chunks):
            vp = i if num_chunks > 1 else None
            first = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp)
            last = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp)
            if dataset is not None and (first or last):
                it = micro_batches(dataset, consumed, cfg.data.micro_batch_size,
                                   parallel_state.get_data_parallel_rank(),
                                   parallel_state.get_data_parallel_world_size(),
                                   num_workers=num_workers, pin_memory=cuda)
                if record and first and os.environ.get(SAMPLE_LOG_ENV) and parallel_state.get_tensor_model_parallel_rank() == 0:
                    it = _recorded(it, os.environ[SAMPLE_LOG_ENV])
                self.per_chunk.append(it)
            else:
                self.per_chunk.append(None)

    def for_schedule(self):
        return self.per_chunk if len(self.per_chunk) > 1 else self.per_chunk[0]


def evaluate(cfg: RunConfig, info, model, tc, valid_ds, gbs: int) -> Optional[float]:
    """Mean validation loss over the first --eval-iters global batches of the validation split. The same batches
    every time (nanoGPT/torchtitan's choice, not Megatron-LM's rolling window), so the curve compares like with
    like."""
    from megatron.core.num_microbatches_calculator import get_num_microbatches
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if valid_ds is None:
        return None
    for m in model:
        m.eval()
    iters = _DataIterators(valid_ds, 0, cfg, len(model), record=False)
    fb = get_forward_backward_func()
    losses: List[Dict[str, torch.Tensor]] = []
    with torch.no_grad():
        for _ in range(cfg.train.eval_iters):
            losses += fb(forward_step_func=partial(_forward_step, info.device),
                         data_iterator=iters.for_schedule(), model=model,
                         num_microbatches=get_num_microbatches(), seq_length=cfg.data.seq_length,
                         micro_batch_size=cfg.data.micro_batch_size, forward_only=True)
    for m in model:
        m.train()
    return _reduce_loss(losses, info.device)


def pretrain(cfg: RunConfig, callbacks: Sequence[TrainCallback] = ()) -> Dict[str, Any]:
    """Run one training job on this rank. Returns a summary (losses per iteration on the logging rank)."""
    from megatron.core.num_microbatches_calculator import get_current_global_batch_size, get_num_microbatches
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_llm.config.arguments import validate
    from megatron_llm.training import checkpoint_files, checkpointing, nan_guard, signals
    from megatron_llm.training.async_checkpoint import AsyncCheckpointer
    from megatron_llm.training.health import HealthMonitor
    from megatron_llm.training.initialize import initialize, shutdown
    from megatron_llm.training.metrics import MetricsLogger

    validate(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    from megatron_llm.parallel.comm_tuning import tune_rank

    tune_rank(cfg)  # overlap / buckets / rank order / CUDA_DEVICE_MAX_CONNECTIONS, each with its reason
    info = initialize(cfg)
    timers = None
    if any(cb.wants_timers for cb in callbacks):
        from megatron.core.timers import Timers

        timers = Timers(log_level=2, log_option="minmax")
    tokenizer = _build_tokenizer(cfg)
    vocab_size = resolve_vocab_size(cfg, tokenizer)
    tc, model, optimizer, padded_vocab = build_model_and_optimizer(cfg, info, vocab_size, timers)
    gbs = get_current_global_batch_size()
    scheduler = build_scheduler(cfg, optimizer, gbs)

    iteration, consumed, stored_data = 0, 0, None
    if cfg.checkpoint.load:
        if info.rank == 0:  # what a killed save left is never loaded (checkpoint_files.py)
            checkpoint_files.remove_partial(cfg.checkpoint.load)
        dist.barrier()
        state = checkpointing.load(cfg, model, optimizer, scheduler)
        if state is not None:
            iteration, consumed, stored_data = state["iteration"], state["consumed_samples"], state["data"]

    from megatron_llm.data.gpt_datasets import build_datasets
    from megatron_llm.training import data_order

    built_for = data_order.train_samples_to_build(cfg, gbs, stored_data)
    train_ds, valid_ds, _test_ds = build_datasets(cfg, tokenizer, gbs, train_samples=built_for)
    if stored_data:
        data_order.check_enough_samples(cfg, gbs, built_for, len(train_ds), cfg.checkpoint.load)
    data = _DataIterators(train_ds, consumed, cfg, len(model))

    ctx = TrainContext(cfg=cfg, rank=info.rank, world_size=info.world_size, device=info.device, model=model,
                       optimizer=optimizer, timers=timers, vocab_size=padded_vocab,
                       tokenizer_vocab_size=vocab_size)
    logger = MetricsLogger(cfg, info, vocab_size=vocab_size, resumed_at=iteration) if info.is_logging_rank else None
    if logger is not None:
        from megatron_llm.models.impl import describe

        logger.info(describe(cfg.impl, info.device))
    for cb in callbacks:
        cb.on_train_start(ctx)

    handler = signals.install()  # from here on a stop signal means "checkpoint at the next log boundary"
    health = HealthMonitor(cfg, info)
    saver = AsyncCheckpointer(cfg.checkpoint.async_save)
    tc.finalize_model_grads_func = health.wrap_finalize(tc.finalize_model_grads_func)
    nan_injector = nan_guard.NanInjector(info.rank)
    skip_batches: set = set()  # iterations whose batch poisoned the gradients: not trained on after a rollback
    fb = get_forward_backward_func()
    history: Dict[int, float] = {}
    val_history: Dict[int, float] = {}
    interval = _Interval()
    exit_code = 0
    while iteration < cfg.train.train_iters:
        if iteration + 1 in skip_batches:
            iteration += 1
            consumed += gbs
            data = _DataIterators(train_ds, consumed, cfg, len(model))
            if logger is not None:
                logger.info(f"iteration {iteration}: batch skipped (its gradients were not finite before the "
                            f"rollback)")
            continue
        for cb in callbacks:
            cb.on_step_start(ctx, iteration + 1)
        health.step_start(iteration + 1)
        t0 = time.perf_counter()
        for m in model:
            m.zero_grad_buffer()
        optimizer.zero_grad()
        nan_injector.before_step(model, iteration + 1)
        losses = fb(forward_step_func=partial(_forward_step, info.device), data_iterator=data.for_schedule(),
                    model=model, num_microbatches=get_num_microbatches(), seq_length=cfg.data.seq_length,
                    micro_batch_size=cfg.data.micro_batch_size, forward_only=False)
        nan_injector.after_step()
        if timers is not None:  # the schedules time forward-backward themselves
            timers("optimizer", log_level=1).start(barrier=False)
        health.optimizer_step(iteration + 1)
        outcome = nan_guard.step(optimizer, cfg.train.check_for_nan_in_loss_and_grad)
        if timers is not None:
            timers("optimizer").stop()
        if outcome.updated:
            scheduler.step(increment=gbs)
        iteration += 1
        consumed += gbs
        if outcome.nonfinite:  # every rank saw the same norm: every rank takes this branch
            message = nan_guard.describe(model, iteration, outcome.grad_norm, info.device)
            policy = cfg.train.nan_policy
            if policy == "rollback":
                state = nan_guard.rollback(cfg, model, optimizer, scheduler)
                if state is None:
                    policy = "stop"
                    message += "; --nan-policy rollback: no checkpoint in --save yet, stopping instead"
                else:
                    if logger is not None:
                        logger.error(f"{message}; rolled back to iteration {state['iteration']}, the batch of "
                                     f"iteration {iteration} will be skipped")
                        logger.rolled_back(iteration, state["iteration"])
                    skip_batches.add(iteration)
                    iteration, consumed = state["iteration"], state["consumed_samples"]
                    data = _DataIterators(train_ds, consumed, cfg, len(model))
                    health.discard_pending()
                    interval = _Interval()
                    continue
            if logger is not None:
                if policy == "stop":
                    logger.error(f"{message}; --nan-policy stop: exiting without saving (resume from the last "
                                 f"checkpoint; check --lr and the data)")
                else:
                    logger.error(f"{message}; update skipped (--nan-policy skip)")
            if policy == "stop":
                exit_code = EXIT_CODE_NAN
        health.step_end(iteration, _local_loss(losses))
        step_time = time.perf_counter() - t0
        interval.add(step_time, outcome)
        metrics = {
            "lm_loss": None,  # known at the log boundary (the losses stay on the device until then)
            "lr": optimizer.param_groups[0]["lr"],
            "grad_norm": outcome.grad_norm,
            "loss_scale": None,  # a device tensor: read at the log boundary
            "iteration_time_s": step_time,
            "skipped": not outcome.updated,
        }
        if timers is not None:
            for name in list(timers._timers.keys()):
                metrics[f"timer_{name.replace('-', '_')}_s"] = timers._timers[name].elapsed(reset=True)
        exit_now = bool(cfg.train.exit_interval and iteration % cfg.train.exit_interval == 0)
        stop_signal = save_due = False
        if (iteration % cfg.train.log_interval == 0 or iteration == cfg.train.train_iters or exit_now
                or exit_code):
            # Every rank must take the same decision, or the ones that stop leave the others hanging in a collective.
            report = health.exchange(handler.received is not None)
            saver.poll()  # publish a background save every rank has finished writing
            stop_signal, save_due = report.stop, report.save_due
            history.update(report.losses)
            nan_loss = (cfg.train.check_for_nan_in_loss_and_grad and exit_code == 0
                        and any(not math.isfinite(v) for v in report.losses.values()))
            if nan_loss:
                if logger is not None:
                    logger.error(f"iteration {iteration}: lm loss is not finite ({report.losses}); stopping "
                                 f"without saving (check --lr, the data, and that --vocab-size matches the "
                                 f"tokenizer)")
                exit_code = EXIT_CODE_NAN
            logged = {**metrics, **interval.summary(report),
                      "loss_scale": float(optimizer.get_loss_scale().item())}
            if logger is not None:
                logged = logger.log_iteration(iteration, logged, consumed)
                if report.stragglers:
                    logger.straggler(iteration, report.stragglers)
            # callbacks see this iteration's own time and loss; the log line the interval's means
            metrics = {**logged, "iteration_time_s": step_time, "skipped": not outcome.updated,
                       "lm_loss": report.losses.get(iteration)}
            interval = _Interval()
        for cb in callbacks:
            cb.on_step_end(ctx, iteration, metrics)
        if exit_code:
            break
        # A stop signal's warning window is for the checkpoint: save first, and skip the evaluation.
        do_eval = not stop_signal and cfg.train.eval_interval and (iteration % cfg.train.eval_interval == 0
                                                                   or iteration == cfg.train.train_iters)
        if do_eval:
            val = evaluate(cfg, info, model, tc, valid_ds, gbs)
            if val is not None:
                val_history[iteration] = val
                if logger is not None:
                    logger.log_validation(iteration, val)
                for cb in callbacks:
                    cb.on_eval(ctx, iteration, val)
        save_now = cfg.checkpoint.save and (
            stop_signal or exit_now or save_due or iteration == cfg.train.train_iters
            or (cfg.checkpoint.save_interval and iteration % cfg.checkpoint.save_interval == 0))
        if save_now:
            saver.save(cfg, model, optimizer, scheduler, iteration, consumed,
                       data_state=data_order.data_state(built_for))
            health.saved()
        if stop_signal:
            if logger is not None:
                logger.info(f"received {handler.signal_name}: saved iteration {iteration}, exiting for requeue")
            exit_code = EXIT_CODE_REQUEUE
            break
        if exit_now:
            break
    saver.close()
    health.close(iteration, exit_code)
    summary = {"iteration": iteration, "lm_loss": history, "val_loss": val_history, "exit_code": exit_code,
               "vocab_size": vocab_size, "padded_vocab_size": padded_vocab}
    for cb in callbacks:
        cb.on_train_end(ctx, summary)
    if logger is not None:
        logger.close()
        if cfg.checkpoint.save:
            logger.info(f"checkpoints: {os.path.abspath(cfg.checkpoint.save)}")
        if cfg.logging.tensorboard_dir:
            logger.info(f"tensorboard + metrics.jsonl: {os.path.abspath(cfg.logging.tensorboard_dir)}")
    handler.restore()
    shutdown()
    return summary
