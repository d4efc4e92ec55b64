"""Run configuration: typed dataclasses, one per concern. Field names are Megatron-LM's flag names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from megatron_llm.config.model import ModelConfig


def _f(default, help_: str, **kw):
    return field(default=default, metadata={"help": help_, **kw})


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = _f(1, "tensor-parallel degree (TP)")
    pipeline_model_parallel_size: int = _f(1, "pipeline-parallel degree (PP)")
    num_layers_per_virtual_pipeline_stage: Optional[int] = _f(
        None, "layers per virtual stage: enables the interleaved 1F1B schedule")
    sequence_parallel: bool = _f(False, "shard LayerNorm/dropout activations along the sequence (needs TP > 1)")
    use_distributed_optimizer: bool = _f(True, "shard optimizer state across data-parallel ranks (ZeRO-1)")
    # None = decided at launch by parallel/comm_tuning.py (printed with its reason); a flag given always wins.
    overlap_grad_reduce: Optional[bool] = _f(
        None, "overlap data-parallel gradient reduce with backward (None: on for GPU runs with DP > 1)",
        negatable=True)
    overlap_param_gather: Optional[bool] = _f(
        None, "overlap distributed-optimizer parameter all-gather with forward (None: with overlap_grad_reduce)",
        negatable=True)
    overlap_p2p_communication: Optional[bool] = _f(
        None, "overlap pipeline send/recv with compute in the interleaved schedule (None: on for GPU runs with "
        "--num-layers-per-virtual-pipeline-stage)", negatable=True)
    ddp_bucket_size: Optional[int] = _f(
        None, "gradient bucket size in elements (None: max(40M, 1M x DP) with overlap, one bucket without)")
    use_tp_pp_dp_mapping: Optional[bool] = _f(
        None, "rank order tp-pp-dp (data parallel outermost) instead of megatron-core's tp-dp-pp (None: on for "
        "GPU runs with PP > 1 and DP > 1)", negatable=True)


@dataclass
class OptimConfig:
    optimizer: str = _f("adam", "adam | sgd", choices=("adam", "sgd"))
    lr: float = _f(3e-4, "peak learning rate")
    min_lr: float = _f(3e-5, "learning rate at the end of decay")
    lr_warmup_iters: int = _f(0, "linear warm-up iterations")
    lr_decay_iters: Optional[int] = _f(None, "decay length in iterations (None: --train-iters)")
    lr_decay_style: str = _f("cosine", "cosine | linear | constant", choices=("cosine", "linear", "constant"))
    weight_decay: float = _f(0.1, "decoupled weight decay")
    adam_beta1: float = _f(0.9, "Adam beta1")
    adam_beta2: float = _f(0.95, "Adam beta2")
    adam_eps: float = _f(1e-8, "Adam epsilon")
    clip_grad: float = _f(1.0, "global gradient-norm clip (0 disables)")
    bf16: bool = _f(False, "bfloat16 mixed precision (fp32 main weights)")
    fp16: bool = _f(False, "float16 mixed precision with dynamic loss scaling")
    loss_scale: Optional[float] = _f(None, "static loss scale for fp16 (None: dynamic)")
    initial_loss_scale: float = _f(2.0 ** 16, "first dynamic loss scale for fp16")


@dataclass
class DataConfig:
    data_path: Optional[List[str]] = _f(
        None, "dataset prefixes, optionally weighted: 'P1' or 'W1 P1 W2 P2 ...'", nargs="+")
    split: str = _f("969,30,1", "train,valid,test proportions of each dataset")
    seq_length: int = _f(2048, "training sequence length")
    micro_batch_size: int = _f(1, "sequences per micro-batch per data-parallel rank")
    global_batch_size: Optional[int] = _f(None, "sequences per iteration over all DP ranks (None: MBS x DP)")
    tokenizer_type: str = _f(
        "NullTokenizer", "SentencePieceTokenizer | HuggingFaceTokenizer | NullTokenizer | ByteTokenizer",
        choices=("SentencePieceTokenizer", "HuggingFaceTokenizer", "NullTokenizer", "ByteTokenizer"))
    tokenizer_model: Optional[str] = _f(None, "tokenizer file (SentencePiece .model or HF tokenizer.json / dir)")
    data_cache_path: Optional[str] = _f(None, "where dataset index caches are written (None: beside the data)")
    mock_data: bool = _f(False, "train on megatron-core's synthetic MockGPTDataset (no files needed)")
    reset_position_ids: bool = _f(False, "restart position ids after each EOD")
    eod_mask_loss: bool = _f(False, "do not compute loss on EOD tokens")
    num_workers: Optional[int] = _f(
        None, "DataLoader worker processes reading batches ahead of the step (None: 2 on CUDA, 0 on CPU)")


@dataclass
class TrainLoopConfig:
    train_iters: int = _f(100, "iterations to train")
    eval_interval: int = _f(100, "evaluate every N iterations (0: never)")
    eval_iters: int = _f(10, "iterations per evaluation")
    log_interval: int = _f(1, "log every N iterations")
    seed: int = _f(1234, "random seed")
    exit_interval: Optional[int] = _f(None, "stop (after saving) once iteration %% N == 0")
    deterministic: bool = _f(True, "deterministic algorithms where the device allows")
    # Fault tolerance (training/nan_guard.py, training/health.py)
    check_for_nan_in_loss_and_grad: bool = _f(
        True, "stop a non-finite gradient norm (or loss) from reaching the weights; --nan-policy says what then")
    nan_policy: str = _f("skip", "on a non-finite gradient: skip the update | rollback to the last checkpoint and "
                         "skip the batch | stop (exit 3)", choices=("skip", "rollback", "stop"))
    straggler_threshold: float = _f(
        0.2, "name ranks whose mean step time over a log interval exceeds the median by this fraction")


@dataclass
class CheckpointConfig:
    save: Optional[str] = _f(None, "checkpoint directory to save into")
    load: Optional[str] = _f(None, "checkpoint directory to resume from (latest complete checkpoint)")
    save_interval: Optional[int] = _f(None, "save every N iterations (and always at the end when --save is set)")
    no_load_optim: bool = _f(False, "load model weights only, not optimizer state")
    no_load_rng: bool = _f(False, "do not restore RNG state")
    finetune: bool = _f(False, "load weights only and start at iteration 0")
    save_interval_minutes: Optional[float] = _f(
        None, "also save once this many minutes have passed since the last save (ranks agree at log intervals)")
    async_save: bool = _f(False, "write checkpoints in the background while training continues; `latest` moves "
                          "once every rank's shard is on disk")
    keep_last: Optional[int] = _f(None, "keep only the newest N complete checkpoints (older ones deleted after a "
                                  "new one is durable)")


@dataclass
class LoggingConfig:
    tensorboard_dir: Optional[str] = _f(None, "tensorboard events + metrics.jsonl directory")
    gpu_peak_tflops: Optional[float] = _f(None, "override the GPU's dense peak TFLOP/s used for MFU")


TRANSFORMER_IMPLS = ("local", "fused", "transformer_engine")


@dataclass
class ImplConfig:
    """How the model computes (not what it computes): layer implementation, per-op fusions, recompute.
    Megatron-LM's flag names; megatron_llm/models/impl.py maps them onto megatron-core's TransformerConfig."""

    transformer_impl: Optional[str] = _f(
        None, "local (megatron-core's own modules) | fused (local + SDPA attention and our fused ops) | "
        "transformer_engine (needs a TE install; untested here). None: fused on CUDA, local on CPU, "
        "transformer_engine when TE imports", choices=TRANSFORMER_IMPLS)
    masked_softmax_fusion: bool = _f(True, "local spec on CUDA: fused scale-mask-softmax kernel")
    bias_swiglu_fusion: bool = _f(True, "fused SwiGLU (with bias when the MLP has one)")
    rope_fusion: bool = _f(True, "fused rotary position embedding on q and k")
    cross_entropy_loss_fusion: bool = _f(False, "fused vocab-parallel cross entropy (never holds fp32 logits)")
    gradient_accumulation_fusion: bool = _f(True, "CUDA: accumulate weight gradients into fp32 main_grad in the "
                                                  "GEMM (fused_weight_gradient_mlp_cuda)")
    recompute_granularity: Optional[str] = _f(
        None, "activation recompute: selective (attention core) | full (whole layers)",
        choices=("selective", "full"))
    recompute_method: Optional[str] = _f(
        None, "with full recompute: uniform (every layer, in groups of --recompute-num-layers) | block (the "
        "first --recompute-num-layers layers of each pipeline stage)", choices=("uniform", "block"))
    recompute_num_layers: Optional[int] = _f(None, "layers per recompute group (uniform) or recomputed (block)")


@dataclass
class LaunchConfig:
    nproc_per_node: int = _f(1, "worker processes to spawn on this node (one per GPU)")
    device: Optional[str] = _f(None, "cuda | cpu (default: cuda when available)", choices=("cuda", "cpu"))
    master_addr: str = _f("127.0.0.1", "rendezvous address (when not launched by torchrun/srun)")
    master_port: Optional[int] = _f(None, "rendezvous port (None: a free port)")
    distributed_timeout_minutes: float = _f(
        10, "minutes a collective may wait before failing (torch.distributed and megatron-core process groups)")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    impl: ImplConfig = field(default_factory=ImplConfig)
    recipe: Optional[str] = None

    SECTIONS = ("model", "parallel", "optim", "data", "train", "checkpoint", "logging", "launch", "impl")

    def data_parallel_size(self, world_size: int) -> int:
        return world_size // (self.parallel.tensor_model_parallel_size * self.parallel.pipeline_model_parallel_size)

    def global_batch_size(self, data_parallel_size: int) -> int:
        """--global-batch-size, or one micro-batch per data-parallel rank when it is not given (Megatron-LM's rule)."""
        return self.data.global_batch_size or self.data.micro_batch_size * data_parallel_size
