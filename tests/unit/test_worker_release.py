"""A rank refused with a configuration error after start-up (a checkpoint or tokenizer that does not fit) destroys
its process groups before it returns exit status 2: left to interpreter exit, a gloo group's thread could take the
GIL while Python finalises and abort the rank (SIGABRT, seen in CI as "terminate called without an active
exception"), and the launcher would act on that instead of the configuration error."""

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
