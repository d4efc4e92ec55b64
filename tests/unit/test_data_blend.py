"""Two preprocessed corpora blended with weights through the project's build_datasets (megatron-core's
BlendedMegatronDatasetBuilder + GPTDataset).

megatron-core's index building needs its compiled ``helpers_cpp`` module; the megatron-core 0.16.1 wheel ships it
prebuilt (megatron/core/datasets/helpers_cpp.*.so), so nothing compiles at start-up on a CPU machine.
"""

from __future__ import annotations

import numpy as np
import pytest

from megatron_llm.data.preprocess import PreprocessConfig, run_preprocess
from megatron_llm.data.tokenizers import build_tokenizer
from test_data_corpora import kjv_texts, mistral_sp_model, peoples_daily_sentences, write_jsonl


def test_helpers_module_is_prebuilt():
    from megatron.core.datasets import helpers_cpp

    assert hasattr(helpers_cpp, "build_blending_indices")


@pytest.fixture
def one_rank_group():
    """build_datasets writes megatron-core's index caches on rank 0, which needs a process group (as in training)."""
    import torch.distributed as dist

    from megatron_llm.launch.local import free_port

    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{free_port()}")
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("weights", [(0.3, 0.7), (0.8, 0.2)])
def test_blend_shares_match_weights(tmp_path, weights, one_rank_group):
    """The trainer's own path: --data-path 'W1 P1 W2 P2' -> parse_blend -> build_datasets (megatron-core builders)."""
    from megatron_llm.config.arguments import build_config
    from megatron_llm.data.gpt_datasets import build_datasets, parse_blend

    en = write_jsonl(str(tmp_path / "en.jsonl"), kjv_texts()[:6000])
    zh = write_jsonl(str(tmp_path / "zh.jsonl"), peoples_daily_sentences()[:3000])
    prefixes = []
    for name, path in (("en", en), ("zh", zh)):
        run_preprocess(PreprocessConfig(inputs=[path], output_prefix=str(tmp_path / name), append_eod=True,
                                        tokenizer_type="SentencePieceTokenizer", tokenizer_model=mistral_sp_model(),
                                        workers=0, quiet=True))
        prefixes.append(str(tmp_path / f"{name}_text_document"))
    data_path = [str(weights[0]), prefixes[0], str(weights[1]), prefixes[1]]
    assert parse_blend(data_path) == (prefixes, list(weights))
    tok = build_tokenizer("SentencePieceTokenizer", mistral_sp_model())
    n = 2000
    cfg = build_config({"data_path": data_path, "split": "100,0,0", "seq_length": 128, "micro_batch_size": 1,
                        "global_batch_size": 1, "train_iters": n, "eval_interval": 0,
                        "tokenizer_type": "SentencePieceTokenizer", "tokenizer_model": mistral_sp_model(),
                        "data_cache_path": str(tmp_path / "cache")})
    train, valid, test = build_datasets(cfg, tok, global_batch_size=1)
    assert valid is None and test is None  # nothing is drawn from them: not built
    assert len(train) == n
    shares = np.bincount(train.dataset_index, minlength=2) / n
    assert abs(shares[0] - weights[0]) < 0.02 and abs(shares[1] - weights[1]) < 0.02, shares
    # and the samples really come from the corpus the index names: Chinese text decodes to CJK characters
    for i in range(50):
        text = tok.detokenize(train[i]["tokens"].tolist())
        has_cjk = any("\u4e00" <= c <= "\u9fff" for c in text)
        assert has_cjk == (train.dataset_index[i] == 1)
