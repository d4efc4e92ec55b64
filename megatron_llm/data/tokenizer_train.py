"""Train a SentencePiece BPE tokenizer the way Baichuan-7B describes it (arXiv 2309.10305 section 2.2):
BPE, digits split into single characters, byte fallback for anything unseen, no NFKC normalisation (text kept as
written), whitespace-only pieces allowed (code), high character coverage, and a random sample of sentences for
large corpora. Reads the same inputs as `megatron-llm preprocess`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Iterator, List, Optional

from megatron_llm.data.corpus import expand_inputs, iter_chunks
from megatron_llm.data.encode import Problems, iter_texts
from megatron_llm.data.progress import Progress


@dataclass
class TrainConfig:
    inputs: List[str]
    output_prefix: str  # writes <prefix>.model and <prefix>.vocab
    vocab_size: int = 64000
    json_keys: List[str] = field(default_factory=lambda: ["text"])
    txt_mode: str = "doc"
    character_coverage: float = 0.9999
    user_defined_symbols: List[str] = field(default_factory=list)
    input_sentence_size: int = 2_000_000  # sentences sampled for training (0 = all); SentencePiece reservoir-samples
    max_sentence_length: int = 16384  # bytes; longer lines are cut into pieces of this size
    normalization_rule_name: str = "identity"  # Baichuan: no NFKC, keep the text as written
    split_digits: bool = True
    byte_fallback: bool = True
    model_type: str = "bpe"
    num_threads: int = os.cpu_count() or 1
    seed: int = 1234
    max_documents: Optional[int] = None
    progress: bool = False  # a progress line on stderr while the corpus is read (documents, sentences/s, ETA)
    log_interval: int = 10000  # documents between progress lines when stderr is not a terminal


def iter_sentences(cfg: TrainConfig, problems: Problems) -> Iterator[str]:
    """Training "sentences": the non-empty lines of every document, cut to max_sentence_length bytes (SentencePiece
    silently drops longer ones)."""
    inputs = expand_inputs(cfg.inputs)
    docs = sentences = 0
    limit = cfg.max_sentence_length // 4  # characters; <= 4 UTF-8 bytes each
    progress = None
    if cfg.progress:
        progress = Progress(sum(i.size for i in inputs), show_bar=sys.stderr.isatty(), log_interval=cfg.log_interval,
                            desc="tokenizer train: reading", unit="sentences")
    try:
        for chunk in iter_chunks(inputs, list(cfg.json_keys), cfg.txt_mode):
            chunk_docs = 0
            for _, _, text in iter_texts(chunk, tuple(cfg.json_keys), problems):
                for line in text.split("\n"):
                    line = line.strip()
                    for i in range(0, len(line), limit):
                        sentences += 1
                        yield line[i:i + limit]
                docs += 1
                chunk_docs += 1
                if cfg.max_documents and docs >= cfg.max_documents:
                    return
            if progress is not None:
                progress.update(chunk.disk_bytes, chunk_docs, sentences, docs)
    finally:
        if progress is not None:
            progress.close()
            print(f"tokenizer train: read {docs:,} documents, {sentences:,} sentences; training "
                  f"(SentencePiece prints nothing until done)", file=sys.stderr, flush=True)


def train_tokenizer(cfg: TrainConfig) -> Problems:
    """Train and write ``<output_prefix>.model/.vocab`` atomically (temp dir, then rename). Returns bad-input counts."""
    import sentencepiece as spm

    if cfg.vocab_size < 260 and cfg.byte_fallback:
        raise ValueError(f"--vocab-size {cfg.vocab_size}: byte fallback needs 256 byte pieces plus specials; "
                         "use at least 260")
    problems = Problems()
    out_dir = os.path.dirname(os.path.abspath(cfg.output_prefix))
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tokenizer-train.", dir=out_dir)
    try:
        model_prefix = os.path.join(tmp, "m")
        spm.set_random_generator_seed(cfg.seed)  # the sentence sample (and so the model) is reproducible
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter_sentences(cfg, problems),
            model_prefix=model_prefix,
            model_type=cfg.model_type,
            vocab_size=cfg.vocab_size,
            character_coverage=cfg.character_coverage,
            split_digits=cfg.split_digits,
            byte_fallback=cfg.byte_fallback,
            user_defined_symbols=cfg.user_defined_symbols or [],
            normalization_rule_name=cfg.normalization_rule_name,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_by_unicode_script=True,
            split_by_number=True,
            max_sentencepiece_length=16,
            max_sentence_length=cfg.max_sentence_length,
            input_sentence_size=cfg.input_sentence_size,
            shuffle_input_sentence=True,
            seed_sentencepiece_size=1_000_000,
            num_threads=cfg.num_threads,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,  # Llama/Baichuan layout: <unk> <s> </s>
            hard_vocab_limit=False,  # a small corpus may not support the exact size; never fail for that
            minloglevel=2,
        )
        for ext in (".vocab", ".model"):  # .model last: its presence means the pair is complete
            os.replace(model_prefix + ext, cfg.output_prefix + ext)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return problems
