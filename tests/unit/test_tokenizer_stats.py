"""TGH coverage counts what a tokenizer encodes as one token, for SentencePiece and byte-level BPE alike."""

from __future__ import annotations

from megatron_llm.data.tgh import tgh_levels
from megatron_llm.data.tokenizer_stats import tgh_coverage
from megatron_llm.data.tokenizers import build_tokenizer
from test_data_corpora import mistral_sp_model, peoples_daily_sentences


def _gpt2_byte_to_char() -> dict:
    """GPT-2's byte -> printable character table, written out from its definition (printable Latin-1 bytes map to
    themselves, the other 68 to U+0100 onwards in byte order)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _byte_level_bpe(path: str) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(peoples_daily_sentences()[:4000], trainers.BpeTrainer(
        vocab_size=3000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    t.save(path)


def test_byte_level_bpe_chinese_characters_count_as_covered(tmp_path):
    path = str(tmp_path / "tokenizer.json")
    _byte_level_bpe(path)
    tok = build_tokenizer("HuggingFaceTokenizer", path)
    vocab = tok._tok.get_vocab()
    byte_char = _gpt2_byte_to_char()
    # independent expectation: the character's UTF-8 bytes, GPT-2-mapped, are one vocabulary entry
    levels = tgh_levels()
    expected = {lv: sum("".join(byte_char[b] for b in ch.encode("utf-8")) in vocab for ch in chars)
                for lv, chars in levels.items()}
    got = tgh_coverage(tok)
    assert expected[1] > 500  # trained on People's Daily: hundreds of common characters are whole tokens
    assert got == expected
    for ch in "的一是在":  # the commonest characters, stored byte-mapped ('的' is 'çļĦ')
        assert ch not in vocab and len(tok.tokenize(ch)) == 1


def test_sentencepiece_coverage_ignores_word_start_piece_and_byte_fallback():
    tok = build_tokenizer("SentencePieceTokenizer", mistral_sp_model())
    sp = tok.processor
    pieces = {sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not sp.is_byte(i)}
    levels = tgh_levels()
    # a character is its own piece (with or without '▁'); others fall back to 3 byte pieces
    expected = {lv: sum(ch in pieces or "\u2581" + ch in pieces for ch in chars) for lv, chars in levels.items()}
    got = tgh_coverage(tok)
    assert got == expected and 0 < got[1] < 3500
    ids = tok.tokenize("的")
    assert [sp.id_to_piece(i) for i in ids][0] == "\u2581"  # what the lone-'▁' rule is for
