"""Real weights: SmolLM2-135M-Instruct (30 layers, hidden 576, 9 heads in 3 KV groups, tied embeddings) converted
to a megatron_llm checkpoint for TP3 x PP2 gives HF's logits at TP1, TP3, PP2 and TP3 x PP2 (fp32, CPU), converts
back to bitwise-equal tensors, and `generate` greedy-decodes HF's own 32 tokens."""

from __future__ import annotations

import json

import pytest
import torch

from hf_reference import kjv_text, layout_logits, run_cli, safetensors_dir

pytest.importorskip("transformers")
pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def converted(smollm2_hf, tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2")
    hf = smollm2_hf  # conftest.py: dequantised from the GGUF once per session
    out = run_cli("convert", "--from", "hf", "--to", "megatron", str(hf), str(root / "mg"),
                  "--tensor-model-parallel-size", "3", "--pipeline-model-parallel-size", "2")
    return root, hf, root / "mg", out


@pytest.fixture(scope="module")
def hf_model(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, hf, _, _ = converted
    return AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(hf)


def test_conversion_reports_memory_and_writes_recipe(converted):
    root, hf, mg, out = converted
    assert "peak RSS" in out and "model 0." in out, out
    import yaml

    recipe = yaml.safe_load((mg / "recipe.yaml").read_text())
    cfg = json.loads((hf / "config.json").read_text())
    assert recipe["num_layers"] == cfg["num_hidden_layers"] == 30
    assert recipe["num_query_groups"] == 3 and recipe["untie_embeddings_and_output_weights"] is False
    assert recipe["tensor_model_parallel_size"] == 3 and recipe["pipeline_model_parallel_size"] == 2
    assert recipe["tokenizer_type"] == "HuggingFaceTokenizer"
    assert (mg / "tokenizer" / "tokenizer.json").is_file()


def test_logits_match_hf_at_every_layout(converted, hf_model, tmp_path):
    _, _, mg, _ = converted
    model, tok = hf_model
    ids = tok(kjv_text(100, 8), return_tensors="pt").input_ids[:, :48]
    tokens = torch.cat([ids[:, :24], ids[:, 24:48]], dim=0)  # two sequences of real text
    with torch.no_grad():
        ref = model(tokens).logits.float()
    got = layout_logits(mg, tokens, "1x1,3x1,1x2,3x2", 6, tmp_path)
    for layout, logits in got.items():
        diff = (logits - ref).abs().max().item()
        assert diff <= 1e-4, f"TP{layout[0]} x PP{layout[1]}: max |logits - HF| = {diff}"


def test_round_trip_is_bitwise(converted, tmp_path):
    _, hf, mg, _ = converted
    run_cli("convert", "--from", "megatron", "--to", "hf", str(mg), str(tmp_path / "back"))
    a, b = safetensors_dir(hf), safetensors_dir(tmp_path / "back")
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back", dtype=torch.float32)
    assert back.config.num_hidden_layers == 30 and (tmp_path / "back" / "tokenizer.json").is_file()


def test_generate_greedy_equals_hf(converted, hf_model):
    _, _, mg, _ = converted
    model, tok = hf_model
    prompt = kjv_text(200, 1)
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        hf_new = model.generate(ids, max_new_tokens=32, do_sample=False)[0, ids.shape[1]:].tolist()
    out = run_cli("generate", "--load", str(mg), "--prompt", prompt, "--max-new-tokens", "32", "--ids",
                  "--device", "cpu")
    ours = [int(x) for x in out.split()]
    assert ours == hf_new, (ours, hf_new)
