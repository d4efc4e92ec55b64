"""training/grad_finalize.py: the same gradients as megatron-core's finalize_model_grads, without its host read."""

import megatron_process


def test_same_gradients_as_megatron_core_without_a_host_read():
    megatron_process.run("""
        from torch.utils._python_dispatch import TorchDispatchMode
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.distributed import finalize_model_grads as megatron_finalize
        from megatron.core.transformer import TransformerConfig
        from megatron_llm.training.grad_finalize import finalize_model_grads

        class HostReads(TorchDispatchMode):  # .item(), bool(), float() of a tensor all come here
            count = 0
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func is torch.ops.aten._local_scalar_dense.default:
                    HostReads.count += 1
                return func(*args, **(kwargs or {}))

        config = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=1, calculate_per_token_loss=True)

        def model_with_grads():
            torch.manual_seed(0)
            module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 3))
            ddp = DistributedDataParallel(config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), module)
            ddp.zero_grad_buffer()
            ddp(torch.randn(5, 8, generator=torch.Generator().manual_seed(1))).square().sum().backward()
            return ddp

        raw = [p.main_grad.clone() for p in model_with_grads().parameters()]
        # a token count; none (every gradient zero-weighted: left alone); the fp16 path's count / tokens
        for count, divisor in [(torch.tensor(37, dtype=torch.int), 37.0), (torch.tensor(0, dtype=torch.int), 1.0),
                               (torch.tensor(0.25), 0.25)]:
            theirs, ours = model_with_grads(), model_with_grads()
            with HostReads():
                HostReads.count = 0
                megatron_finalize([theirs], count.clone())
                their_reads = HostReads.count
                HostReads.count = 0
                finalize_model_grads([ours], count.clone())
                our_reads = HostReads.count
            assert their_reads >= 1 and our_reads == 0, (their_reads, our_reads)
            for g, a, b in zip(raw, theirs.parameters(), ours.parameters()):
                assert torch.equal(a.main_grad, b.main_grad), (count, (a.main_grad - b.main_grad).abs().max())
                torch.testing.assert_close(b.main_grad, g / divisor, rtol=1e-6, atol=0)
        print("ok")
    """)
