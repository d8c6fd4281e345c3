"""BPE targets per fold: SentencePiece trained on each fold's TRAINING text only.

Trained on all of data/all, the units would be shaped by the test speaker's words
(a word said only by the test speaker could become one piece, and its CTC target
would be easier than in the paper's setting). So bpe runs after stage 2, once per
fold, on ``foldNN/train/text_norm`` (written by stage 1 with --token-type bpe, and
split by stage 2); valid and test are then encoded with that fold's model.
Characters never seen in training become ``<unk>``.

Writes, for a set S = bpe<N>_emo (tagged) or bpe<N> (see mtlser.text.tokenize)::

    FOLDS/foldNN/token_list/S/bpe.model     the fold's SentencePiece model (unigram, as ESPnet's default)
    FOLDS/foldNN/token_list/S/tokens.txt    <blank>, then the pieces (x K emotion tags when tagged)
    FOLDS/foldNN/token_list/S/emotions      tagged: the inventory the tags index (the fold's)
    FOLDS/foldNN/{train,valid,test}/text_S  the targets (no valid/ with stage 2's --valid none)
    FOLDS/final/...                         the same for the final model's data (all speakers, train/ only)

Usage:
    python -m mtlser.text.bpe --folds-dir data/loso [--nbpe 100] [--emo-tag true] [--bpe-mode unigram]
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from pathlib import Path

from mtlser.data.datadir import read_table, write_table
from mtlser.data.emotions import inventory_of, write_inventory
from mtlser.data.fold_names import FINAL, fold_dirs
from mtlser.text.tokenize import FOLD_TOKEN_LIST_DIR, emotion_indices, read_token_list, str2bool, tag, \
    tag_separator, tagged_token_list, token_list_path, token_set_name, write_token_list
from mtlser.utils import MtlserError, run_main, setup_logging
from mtlser.utils.fileio import atomic_write_bytes

logger = logging.getLogger(__name__)

UNK = "<unk>"


def train_bpe(sentences: list[str], nbpe: int, mode: str = "unigram") -> bytes:
    """A SentencePiece model (serialized) from these sentences alone; deterministic (one thread)."""
    import sentencepiece as spm

    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise MtlserError("no training text for bpe: every transcript of the training split is empty")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=nbpe, model_type=mode,
        # Small corpora cannot always fill nbpe pieces; take what they give rather than fail.
        hard_vocab_limit=False, character_coverage=1.0, num_threads=1,
        # No BOS/EOS (CTC has its own blank); <unk> is piece 0 and stays in the token list.
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
        # text_norm is already normalised; identity keeps pieces equal to its characters.
        normalization_rule_name="identity", minloglevel=2,
    )
    return model.getvalue()


def pieces_of(model: bytes) -> list[str]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def encode(model: bytes, texts: dict[str, str]) -> dict[str, list[str]]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    # Through ids, so that unseen characters come out as <unk>, not as their own surface.
    return {u: [sp.id_to_piece(i) for i in sp.encode(t)] if t.strip() else [] for u, t in texts.items()}


def bpe_fold(fold_dir: Path, nbpe: int = 100, emo_tag: bool = True, mode: str = "unigram") -> dict:
    name = token_set_name("bpe", emo_tag, nbpe)
    sep = tag_separator("bpe")
    texts = {}
    # train/ always; valid/ unless stage 2 made none; test/ in every fold but final/ (all speakers train).
    for split in ("train", "valid", "test"):
        if split != "train" and not (fold_dir / split).is_dir():
            continue
        path = fold_dir / split / "text_norm"
        if not path.is_file():
            raise MtlserError(f"{path}: missing; run the tokens step with --token-type bpe (it writes "
                              "text_norm), then the folds step")
        texts[split] = read_table(path, allow_empty_value=True)
    emotions = inventory_of([fold_dir / split for split in texts])[0] if emo_tag else []
    model = train_bpe(list(texts["train"].values()), nbpe, mode)
    pieces = pieces_of(model)
    token_list = token_list_path(fold_dir / FOLD_TOKEN_LIST_DIR, name)
    out_dir = token_list.parent
    atomic_write_bytes(out_dir / "bpe.model", model)
    write_token_list(token_list, tagged_token_list(pieces, emo_tag, sep, len(emotions)))
    if emo_tag:
        write_inventory(out_dir, emotions)
    n_unk = 0
    for split, t in texts.items():
        emo_index = emotion_indices(fold_dir / split, read_table(fold_dir / split / "utt2emo"))[1] if emo_tag else {}
        seqs = encode(model, t)
        n_unk += sum(s.count(UNK) for s in seqs.values()) if split != "train" else 0
        # An utterance with no class (not in emo_index) has no tagged targets: it trains without the CTC term.
        write_table(fold_dir / split / f"text_{name}", {u: "" if emo_tag and u not in emo_index
                                                         else tag(seqs[u], emo_index.get(u), emo_tag, sep) for u in t})
    logger.info("%s: %d pieces trained on %d training transcripts; valid+test hold %d <unk>", fold_dir,
                len(pieces), len(texts["train"]), n_unk)
    return {"fold": fold_dir.name, "pieces": len(pieces), "unk": n_unk, "token_list": str(token_list)}


def bpe_folds(folds_dir: str | Path, nbpe: int = 100, emo_tag: bool = True, mode: str = "unigram") -> list[dict]:
    folds_dir = Path(folds_dir)
    folds = fold_dirs(folds_dir)
    if not folds:
        raise MtlserError(f"{folds_dir}: no fold dirs; run the folds step first")
    if (folds_dir / FINAL / "train").is_dir():
        folds.append(folds_dir / FINAL)
    rows = [bpe_fold(f, nbpe, emo_tag, mode) for f in folds]
    read_token_list(rows[0]["token_list"])  # the contract the trainer relies on
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Per-fold BPE targets, trained on each fold's training text.")
    parser.add_argument("--folds-dir", required=True, help="the folds step's output, e.g. data/loso")
    parser.add_argument("--nbpe", type=int, default=100, help="pieces per fold (an upper bound on small data)")
    parser.add_argument("--emo-tag", type=str2bool, default=True, help="append the emotion index to every piece")
    parser.add_argument("--bpe-mode", default="unigram", choices=["unigram", "bpe"])
    args = parser.parse_args(argv)
    setup_logging()
    bpe_folds(args.folds_dir, args.nbpe, args.emo_tag, args.bpe_mode)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
