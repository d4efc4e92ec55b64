"""`megatron-llm generate`: text from a checkpoint (any saved layout; on one process, or split tensor-parallel over
--tensor-model-parallel-size processes), with a KV cache."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import List, Optional, Tuple

PROG = "megatron-llm generate"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, allow_abbrev=False,
                                 description="Continue a prompt with a model from a megatron-llm checkpoint.")
    ap.add_argument("--load", required=True, help="checkpoint directory (--save of train, or convert's output)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-file", help="file holding the prompt text")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy decoding")
    ap.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (1: off)")
    ap.add_argument("--seed", type=int, default=1234, help="sampling seed")
    ap.add_argument("--tokenizer-type", default=None,
                    choices=("SentencePieceTokenizer", "HuggingFaceTokenizer", "NullTokenizer"),
                    help="default: the tokenizer shipped in LOAD/tokenizer by convert (NullTokenizer: the prompt is "
                         "whitespace-separated ids)")
    ap.add_argument("--tokenizer-model", default=None)
    ap.add_argument("--device", default=None, choices=("cuda", "cpu"), help="default: cuda when available")
    ap.add_argument("--ids", action="store_true", help="print the generated token ids instead of text")
    ap.add_argument("--tensor-model-parallel-size", type=int, default=1,
                    help="split the model over this many processes (spawned here, or ranks of torchrun/srun)")
    return ap


def _tokenizer_args(args) -> Tuple[str, Optional[str]]:
    if args.tokenizer_type == "NullTokenizer":
        return "NullTokenizer", None
    if args.tokenizer_model:
        kind = args.tokenizer_type or ("SentencePieceTokenizer" if args.tokenizer_model.endswith(".model")
                                       else "HuggingFaceTokenizer")
        return kind, args.tokenizer_model
    shipped = os.path.join(args.load, "tokenizer")
    if os.path.isfile(os.path.join(shipped, "tokenizer.json")):
        return "HuggingFaceTokenizer", shipped
    if os.path.isfile(os.path.join(shipped, "tokenizer.model")):
        return "SentencePieceTokenizer", os.path.join(shipped, "tokenizer.model")
    raise ValueError(f"{args.load}: no tokenizer/ directory shipped with the checkpoint; pass --tokenizer-model")


def _eos(info, tokenizer) -> Optional[int]:
    gen = (info.common.get("hf") or {}).get("generation_config") or {}
    eos = gen.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return int(eos) if eos is not None else getattr(tokenizer, "eod", None)


def preload(argv: List[str]) -> None:
    """The imports every rank makes, done once by a launcher that forks CPU ranks (launch/forked_rank.py)."""
    import megatron_llm.data.tokenizers  # noqa: F401
    import megatron_llm.inference.generate  # noqa: F401  (torch, megatron-core)
    import megatron_llm.inference.session  # noqa: F401


def main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    from megatron_llm.launch.local import launched_externally, run_workers

    tp = args.tensor_model_parallel_size
    if tp < 1:
        print(f"{PROG}: error: --tensor-model-parallel-size must be >= 1", file=sys.stderr)
        return 2
    external = launched_externally()
    if tp > 1 and not external:
        import torch

        cpu = args.device == "cpu" or not torch.cuda.is_available()
        return run_workers("megatron_llm.cli.generate", argv, tp, cpu=cpu)
    try:
        from megatron_llm.data.tokenizers import TokenizerError, build_tokenizer
        from megatron_llm.inference.sampling import Sampling

        sampling = Sampling(args.temperature, args.top_k, args.top_p, args.seed)
        if args.max_new_tokens < 1:
            raise ValueError("--max-new-tokens must be >= 1")
        text = args.prompt if args.prompt is not None else open(args.prompt_file, encoding="utf-8").read()
        kind, path = _tokenizer_args(args)
        from megatron_llm.inference import session
        from megatron_llm.inference.generate import generate
        from megatron_llm.parallel.device import resolve_device

        device = resolve_device(args.device)
        info = session.checkpoint_info(args.load)
        tokenizer = build_tokenizer(kind, tokenizer_model=path, vocab_size=info.vocab_size)
        for name, value in (("attention heads", info.model["num_attention_heads"]),
                            ("query groups", info.model["num_query_groups"]),
                            ("FFN width", info.model["ffn_hidden_size"])):
            if value % tp:
                raise ValueError(f"--tensor-model-parallel-size {tp} does not divide the model's {name} ({value})")
        cfg = session.run_config(info.model, tp=tp, dtype=info.dtype, load=os.path.dirname(info.path),
                                 device=device)
        # progress lines go to stderr: stdout carries only the generated text (or ids)
        with contextlib.redirect_stdout(sys.stderr), session.process_group(cfg, external):
            model = session.build_model(cfg, info.vocab_rows, device, info.vocab_size)[0]
            session.load_weights(cfg, [model])
            ids = generate(model, tokenizer.tokenize(text), args.max_new_tokens, info.vocab_size, sampling,
                           eos_id=_eos(info, tokenizer))
    except (OSError, ValueError, RuntimeError, TokenizerError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0 or not external:  # every TP rank has the same tokens
        print(" ".join(map(str, ids)) if args.ids else tokenizer.detokenize(ids), flush=True)
    return 0


if __name__ == "__main__":  # a rank spawned by --tensor-model-parallel-size
    sys.exit(main(sys.argv[1:]))
