"""Independent reference for the first iteration's gradient: one process, no schedule, no DDP, plain autograd on
the token-weighted mean loss of the whole global batch. `python grad_reference.py <train flags>` prints JSON:
lm_loss, grad_norm (token-weighted mean) and grad_norm_mean_of_means (each micro-batch's mean, averaged)."""

from __future__ import annotations

import json
import os
import sys

import torch


def main(argv):
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    from megatron_llm.config.arguments import build_config, parse_run_args
    from megatron_llm.data.gpt_datasets import build_datasets, collate
    from megatron_llm.models.init import init_weights
    from megatron_llm.models.llama import build_model_chunks, padded_vocab_size, transformer_config
    from megatron_llm.training.initialize import initialize
    from megatron_llm.training.pretrain import _build_tokenizer, resolve_vocab_size

    args, values = parse_run_args(argv)
    cfg = build_config(values, args.recipe)
    initialize(cfg)
    tokenizer = _build_tokenizer(cfg)
    vocab = resolve_vocab_size(cfg, tokenizer)
    gbs, mbs = cfg.data.global_batch_size, cfg.data.micro_batch_size
    model = build_model_chunks(cfg, transformer_config(cfg, "cpu"),
                               padded_vocab_size(vocab, 1, cfg.model.make_vocab_size_divisible_by),
                               real_vocab_size=vocab)[0]
    init_weights([model], cfg.train.seed, cfg.model.init_method_std, cfg.model.num_layers, vocab_size=vocab)
    train_ds = build_datasets(cfg, tokenizer, gbs)[0]
    batch = collate([train_ds[i] for i in range(gbs)])  # iteration 1 consumes samples [0, gbs)
    mask = batch["loss_mask"].float()

    def grad_norm(loss_of):
        """Norm of the gradient of loss_of(per-token losses), from a fresh forward (the cross entropy's backward
        works in place, so a graph is used once)."""
        model.zero_grad(set_to_none=True)
        losses = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"]).float()
        loss = loss_of(losses)
        loss.backward()
        norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
        return float(loss), float(norm)

    def token_weighted(losses):
        return (losses * mask).sum() / mask.sum()

    def mean_of_means(losses):
        per_micro = [(losses[i:i + mbs] * mask[i:i + mbs]).sum() / mask[i:i + mbs].sum()
                     for i in range(0, gbs, mbs)]
        return sum(per_micro) / len(per_micro)

    loss, norm = grad_norm(token_weighted)
    print(json.dumps({"lm_loss": loss, "grad_norm": norm, "grad_norm_mean_of_means": grad_norm(mean_of_means)[1],
                      "tokens_per_micro_batch": [float(mask[i:i + mbs].sum()) for i in range(0, gbs, mbs)]}))


if __name__ == "__main__":
    main(sys.argv[1:])
