"""Process groups end before the interpreter does: left to interpreter exit, a gloo group's thread could take the GIL
while Python finalises and abort the process (SIGABRT, seen in CI as "terminate called without an active
exception"), and a launcher would act on that instead of the real exit status. A rank refused with a configuration
error after start-up (a checkpoint or tokenizer that does not fit) releases its groups and returns 2; any other CPU
exit releases them at exit."""

import json
import subprocess
import sys
import textwrap

CODE = textwrap.dedent("""
    import json, os
    from megatron_llm.launch.local import free_port
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    from megatron_llm.config.arguments import ConfigError
    from megatron_llm.training import pretrain, worker
    seen = {}
    def refuse(cfg, tokenizer):  # raised where a real refusal is: after initialize, before the model
        import torch.distributed as dist
        from megatron.core import parallel_state
        seen["initialised"] = dist.is_initialized() and parallel_state.model_parallel_is_initialized()
        raise ConfigError("--vocab-size: refused by the test")
    pretrain.resolve_vocab_size = refuse
    rc = worker.main(["--device", "cpu", "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "128",
                      "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2", "--seq-length", "16",
                      "--max-position-embeddings", "16", "--micro-batch-size", "1", "--global-batch-size", "1",
                      "--train-iters", "1"])
    import torch.distributed as dist
    from megatron.core import parallel_state
    print(json.dumps({"rc": rc, **seen, "dist_after": dist.is_initialized(),
                      "megatron_after": parallel_state.model_parallel_is_initialized()}))
""")


def test_config_error_after_start_up_destroys_the_process_groups():
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", CODE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"rc": 2, "initialised": True, "dist_after": False, "megatron_after": False}, out
    assert "megatron-llm train: error: --vocab-size: refused by the test" in proc.stderr


def test_a_cpu_process_that_exits_without_shutdown_destroys_its_groups_first():
    """Any other exit (an exception, a script that just ends): initialize() registered release() at exit for gloo.
    A handler registered before initialize() runs after it (atexit is last in, first out) and sees the result."""
    code = textwrap.dedent("""
        import atexit, os
        from megatron_llm.launch.local import free_port
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
        import torch.distributed as dist
        atexit.register(lambda: print("at exit: initialised", dist.is_initialized(), flush=True))
        from megatron_llm.config.arguments import build_config
        from megatron_llm.training.initialize import initialize
        initialize(build_config({"device": "cpu", "mock_data": True, "num_layers": 2, "hidden_size": 32,
                                 "num_attention_heads": 2, "vocab_size": 128, "seq_length": 16,
                                 "max_position_embeddings": 16}))
        assert dist.is_initialized()
        raise SystemExit(5)
    """)
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 5, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "at exit: initialised False", proc.stdout
