"""Model presets: every recipe loads, has the shape its source publishes, and our parameter count is the real one.

Expected counts are independent of our formula: the totals the Hugging Face checkpoints of these models report
(sum of tensor sizes), and for Tiny-LLM the rounded sizes of its README table. The formula itself is checked
against a real megatron-core GPTModel built from a recipe.
"""

import subprocess
import sys
import textwrap

import pytest

from megatron_llm.config.arguments import ConfigError, build_config, list_recipes, load_recipe, validate

# Hugging Face checkpoint totals (parameters of the released safetensors/bin files).
PUBLISHED_EXACT = {
    "tinyllama-1.1b": 1_100_048_384,
    "llama2-7b": 6_738_415_616,
    "llama2-13b": 13_015_864_320,
    "llama2-70b": 68_976_648_192,
    "open-llama-7b": 6_738_415_616,
    "baichuan-7b": 7_000_559_616,
}

# Tiny-LLM's README rounds to two or three significant figures; its 92m row is 5% above the shape it lists.
PUBLISHED_ROUNDED = {
    "tiny-llm-16m": 16e6, "tiny-llm-42m": 42e6, "tiny-llm-92m": 92e6, "tiny-llm-210m": 210e6,
    "tiny-llm-440m": 440e6, "tiny-llm-1.5b": 1.5e9,
}

REQUIRED = set(PUBLISHED_EXACT) | set(PUBLISHED_ROUNDED) | {"hammerllm-1.4b"}


def test_all_presets_present():
    assert REQUIRED <= set(list_recipes())


@pytest.mark.parametrize("name", sorted(PUBLISHED_EXACT))
def test_parameter_count_matches_released_checkpoint(name):
    m = build_config({}, name).model
    assert m.num_parameters() == PUBLISHED_EXACT[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED_ROUNDED))
def test_tiny_llm_sizes_match_readme(name):
    m = build_config({}, name).model
    assert m.vocab_size == 64798
    assert m.num_query_groups == m.num_attention_heads  # multi-head attention
    assert abs(m.num_parameters() / PUBLISHED_ROUNDED[name] - 1) < 0.06


def test_hammerllm_is_tinyllama_shape_with_its_vocabulary():
    hammer, tiny = build_config({}, "hammerllm-1.4b").model, build_config({}, "tinyllama-1.1b").model
    for field in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups"):
        assert getattr(hammer, field) == getattr(tiny, field)
    # Two (untied) embedding matrices grow by the extra vocabulary: 2 x 2048 x (105789 - 32000).
    assert hammer.num_parameters() - tiny.num_parameters() == 2 * 2048 * (105789 - 32000)
    assert round(hammer.num_parameters() / 1e9, 1) == 1.4


def test_llama2_70b_uses_grouped_query_attention():
    m = build_config({}, "llama2-70b").model
    assert (m.num_attention_heads, m.num_query_groups, m.head_dim) == (64, 8, 128)


def test_command_line_overrides_recipe():
    cfg = build_config({"num_layers": 4, "seq_length": 128}, "llama2-7b")
    assert cfg.model.num_layers == 4 and cfg.data.seq_length == 128
    assert cfg.model.hidden_size == 4096  # the rest still comes from the recipe
    assert cfg.recipe == "llama2-7b"


def test_recipes_validate_at_their_intended_scale():
    # Each preset must be a legal configuration at a layout people run it with (8 GPUs a node).
    for name, (tp, pp, world) in {"llama2-70b": (8, 4, 64), "llama2-13b": (4, 1, 16), "llama2-7b": (2, 1, 16),
                                  "baichuan-7b": (1, 1, 128), "tinyllama-1.1b": (1, 1, 8),
                                  "tiny-llm-1.5b": (2, 2, 8)}.items():
        cfg = build_config({"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp,
                            "mock_data": True, "train_iters": 100_000}, name)  # past the recipes' warm-up
        validate(cfg, world)


def test_unknown_recipe_and_bad_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match="no-such-model.*known recipes: .*tinyllama-1.1b"):
        load_recipe("no-such-model")
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_layers: 2\nhidden_dim: 64\n")
    with pytest.raises(ConfigError, match="unknown key 'hidden_dim'"):
        load_recipe(str(bad))


def test_formula_equals_a_real_megatron_core_model():
    # Build tiny-llm-16m (untied) and a tied, GQA variant as real GPTModels (one CPU process, gloo) and count.
    code = textwrap.dedent("""
        import os, json
        from megatron_llm.launch.local import free_port  # a fixed port collides with concurrent runs
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        from megatron_llm.config.arguments import build_config
        from megatron_llm.training.initialize import initialize
        from megatron_llm.models.llama import build_model_chunks, padded_vocab_size, transformer_config
        out = {}
        for name, over in [("tiny-llm-16m", {}),
                           ("tiny-llm-16m", {"num_query_groups": 2, "untie_embeddings_and_output_weights": False})]:
            cfg = build_config({"device": "cpu", "mock_data": True, **over}, name)
            initialize(cfg)
            tc = transformer_config(cfg, "cpu")
            vocab = padded_vocab_size(cfg.model.vocab_size, 1)
            chunks = build_model_chunks(cfg, tc, vocab)
            real = sum(p.numel() for c in chunks for p in c.parameters())
            out[str(sorted(over.items()))] = [real, cfg.model.num_parameters(vocab)]
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(counts) == 2
    for real, formula in counts.values():
        assert real == formula


def test_warmup_longer_than_the_schedule_is_named():
    # megatron-core's scheduler would stop with a bare AssertionError (warm-up steps < decay steps).
    cfg = build_config({"mock_data": True, "vocab_size": 64, "train_iters": 5, "lr_warmup_iters": 5})
    with pytest.raises(ConfigError, match="--lr-warmup-iters 5 must be smaller .*--train-iters 5"):
        validate(cfg, 1)
    cfg = build_config({"mock_data": True, "vocab_size": 64, "train_iters": 5, "lr_warmup_iters": 5, "lr_decay_iters": 6})
    validate(cfg, 1)


def test_profile_of_a_recipe_warms_up_within_the_profile():
    from megatron_llm.profiling.options import profile_config

    _, cfg, _ = profile_config(["--recipe", "tinyllama-1.1b", "--mock-data", "--warmup-iters", "3",
                                "--profile-iters", "10"])
    assert cfg.train.train_iters == 13 and cfg.optim.lr_warmup_iters == 12
    validate(cfg, 8)
