"""Two preprocessed corpora blended with weights through megatron-core's BlendedMegatronDatasetBuilder + GPTDataset.

megatron-core's index building needs its compiled ``helpers_cpp`` module; the megatron-core 0.16.1 wheel ships it
prebuilt (megatron/core/datasets/helpers_cpp.*.so), so nothing compiles at start-up on a CPU machine.
"""

from __future__ import annotations

import numpy as np
import pytest

from megatron_llm.data.preprocess import PreprocessConfig, run_preprocess
from megatron_llm.data.tokenizers import build_tokenizer
from test_data_corpora import kjv_texts, mistral_sp_model, peoples_daily_sentences, write_jsonl


class _TokenizerView:
    """What GPTDataset reads from a tokenizer (the trainer has its own; kept local so this test stands alone)."""

    def __init__(self, tok):
        self.vocab_size, self.eod, self.pad = tok.vocab_size, tok.eod, tok.eod
        self.unique_identifiers = tok.unique_identifiers


def test_helpers_module_is_prebuilt():
    from megatron.core.datasets import helpers_cpp

    assert hasattr(helpers_cpp, "build_blending_indices")


@pytest.mark.parametrize("weights", [(0.3, 0.7), (0.8, 0.2)])
def test_blend_shares_match_weights(tmp_path, weights):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    en = write_jsonl(str(tmp_path / "en.jsonl"), kjv_texts()[:6000])
    zh = write_jsonl(str(tmp_path / "zh.jsonl"), peoples_daily_sentences()[:3000])
    prefixes = []
    for name, path in (("en", en), ("zh", zh)):
        run_preprocess(PreprocessConfig(inputs=[path], output_prefix=str(tmp_path / name), append_eod=True,
                                        tokenizer_type="SentencePieceTokenizer", tokenizer_model=mistral_sp_model(),
                                        workers=0, quiet=True))
        prefixes.append(str(tmp_path / f"{name}_text_document"))
    tok = build_tokenizer("SentencePieceTokenizer", mistral_sp_model())
    # path_to_cache=None: on-disk index caches need torch.distributed initialised (the trainer has it)
    config = GPTDatasetConfig(random_seed=1234, sequence_length=128, blend=(prefixes, list(weights)),
                              split="100,0,0", path_to_cache=None, tokenizer=_TokenizerView(tok),
                              reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
                              create_attention_mask=False)  # real data: blend given, GPTDataset (not Mock)
    n = 2000
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [n, 0, 0], lambda: True, config).build()
    assert len(train) == n
    shares = np.bincount(train.dataset_index, minlength=2) / n
    assert abs(shares[0] - weights[0]) < 0.02 and abs(shares[1] - weights[1]) < 0.02, shares
    # and the samples really come from the corpus the index names: Chinese text decodes to CJK characters
    for i in range(50):
        text = tok.detokenize(train[i]["tokens"].tolist())
        has_cjk = any("\u4e00" <= c <= "\u9fff" for c in text)
        assert has_cjk == (train.dataset_index[i] == 1)
