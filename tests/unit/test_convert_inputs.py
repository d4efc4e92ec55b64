"""Bad conversion inputs fail with a message naming the file, tensor or flag, and leave no output behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from megatron_llm.convert import families  # noqa: E402
from megatron_llm.convert.hf_io import ConversionError  # noqa: E402
from megatron_llm.convert.to_megatron import convert  # noqa: E402

SHAPE = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


def _llama(d: Path, **save_kw) -> Path:
    import torch

    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE)).save_pretrained(d, **save_kw)
    return d


def _no_output(out: Path) -> None:
    assert not out.exists(), f"{out} left behind"
    assert not Path(str(out) + ".partial").exists(), "temporary output left behind"


def test_missing_shard_is_named(tmp_path):
    src = _llama(tmp_path / "hf", max_shard_size="100KB")
    shard = sorted(src.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ConversionError, match=shard.name):
        convert(str(src), str(tmp_path / "out"))
    _no_output(tmp_path / "out")


def test_truncated_safetensors_is_named(tmp_path):
    src = _llama(tmp_path / "hf")
    f = src / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match=r"model\.safetensors.*truncated"):
        convert(str(src), str(tmp_path / "out"))
    _no_output(tmp_path / "out")


def test_heads_not_divisible_by_tp(tmp_path):
    src = _llama(tmp_path / "hf")
    with pytest.raises(ConversionError, match=r"num_attention_heads = 4 is not divisible by "
                                              r"--tensor-model-parallel-size 3"):
        convert(str(src), str(tmp_path / "out"), tp=3)
    with pytest.raises(ConversionError, match=r"num_hidden_layers = 2 is not divisible by "
                                              r"--pipeline-model-parallel-size = 4"):
        convert(str(src), str(tmp_path / "out"), pp=4)
    with pytest.raises(ConversionError, match=r"needs --pipeline-model-parallel-size >= 2"):
        convert(str(src), str(tmp_path / "out"), vp=1)
    _no_output(tmp_path / "out")


def test_mismatched_shape_names_the_tensor(tmp_path):
    """The config promises a wider MLP than the weights have: found while filling the model (in a subprocess,
    like a user's run), reported by tensor, and the half-written output is removed."""
    src = _llama(tmp_path / "hf")
    cfg = json.loads((src / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "megatron_llm.cli", "convert", "--from", "hf", "--to", "megatron",
                           str(src), str(out)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert ("tensor model.layers.0.mlp.down_proj.weight gives decoder.layers.0.mlp.linear_fc2.weight the shape "
            "(64, 96), expected (64, 128)") in proc.stderr, \
        proc.stderr[-3000:]
    _no_output(out)


def test_existing_output_is_refused(tmp_path):
    src = _llama(tmp_path / "hf")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(ConversionError, match="already exists"):
        convert(str(src), str(out))
    assert (out / "keep").read_text() == "x"


@pytest.mark.parametrize("change, message", [
    ({"architectures": ["GPT2LMHeadModel"]}, "GPT2LMHeadModel.*is not supported; supported: LlamaForCausalLM"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "RoPE scaling.*llama3"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"architectures": ["MistralForCausalLM"], "sliding_window": 4096}, "sliding_window=4096"),
    ({"attention_bias": True}, "attention_bias"),
])
def test_unsupported_configs_are_refused_by_name(change, message):
    cfg = {"architectures": ["LlamaForCausalLM"], **SHAPE, **change}
    with pytest.raises(ConversionError, match=message):
        fam = families.family_of(cfg, "config.json")
        families.model_fields(fam, cfg, "config.json")


def test_config_translation_matches_hand_values():
    cfg = {"architectures": ["Qwen2ForCausalLM"], **SHAPE, "rope_theta": 1e6, "rms_norm_eps": 1e-6,
           "tie_word_embeddings": True, "use_sliding_window": False, "sliding_window": 4096}
    m = families.model_fields(families.family_of(cfg, "c"), cfg, "c")
    assert m == {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 2,
                 "ffn_hidden_size": 96, "kv_channels": 16, "vocab_size": 256, "max_position_embeddings": 64,
                 "rotary_base": 1e6, "norm_epsilon": 1e-6, "untie_embeddings_and_output_weights": False,
                 "add_qkv_bias": True, "use_stable_embedding": False}


def test_qkv_packing_is_megatrons_group_order():
    """Per query group: its query heads, then its key head, then its value head (hand-built rows)."""
    import torch

    heads, groups, d = 4, 2, 1
    q = torch.tensor([[10.0], [11.0], [12.0], [13.0]])  # heads 0..3 (groups 0,0,1,1)
    k = torch.tensor([[20.0], [21.0]])
    v = torch.tensor([[30.0], [31.0]])
    packed = families._qkv_pack(q, k, v, groups)
    assert packed.view(-1).tolist() == [10, 11, 20, 30, 12, 13, 21, 31]
    back = families._qkv_unpack(packed, groups, heads, d)
    assert all(torch.equal(a, b) for a, b in zip(back, (q, k, v)))


def test_generate_flag_errors_are_named(tmp_path, capsys):
    from megatron_llm.cli import generate

    assert generate.main(["--load", str(tmp_path), "--prompt", "x", "--top-p", "0"]) == 2
    assert "--top-p must be in (0, 1]" in capsys.readouterr().err
    assert generate.main(["--load", str(tmp_path), "--prompt", "x"]) == 2
    assert "no tokenizer/ directory shipped with the checkpoint; pass --tokenizer-model" in capsys.readouterr().err
