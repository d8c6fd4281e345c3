"""Test utterances that the decode could not decode, and how scoring reports them.

Decoding (mtlser.infer.decode) decodes the rest of a fold when an utterance is unreadable or shorter than
the model's receptive field, and lists each such utterance in the decode dir's
Kaldi table ``utt2error`` (``utt reason...``). Scoring computes WA/UA on the
decoded utterances only, and says so everywhere a figure appears: result.txt,
result.json (``not_scored``, ``not_scored_utts``), results.json and RESULTS.md.
A figure over fewer utterances than the test set must never look like one over all.
"""

from __future__ import annotations

from pathlib import Path

from mtlser.data.datadir import read_table
from mtlser.expdir import UTT2ERROR
from mtlser.utils import MtlserError


def read_utt2error(decode_dir: Path, hyp: dict[str, str]) -> dict[str, str]:
    """``utt -> reason`` from the decode dir's utt2error ({} when there is none); an utterance both
    decoded and listed there is an error."""
    path = decode_dir / UTT2ERROR
    if not path.is_file():
        return {}
    errors = read_table(path, allow_empty_value=True)
    both = sorted(set(errors) & set(hyp))
    if both:
        raise MtlserError(f"{path}: {len(both)} utterances are also in utt2emo_hyp (e.g. {both[:3]}); the decode "
                          "dir mixes two runs: decode it again")
    return {u: r or "(no reason given)" for u, r in errors.items()}


def header_line(errors: dict[str, str], total: int) -> list[str]:
    """The result.txt line under the figures saying what they leave out (none when everything was scored)."""
    if not errors:
        return []
    return [f"NOT SCORED: {len(errors)} of {total} test utterances could not be decoded ({UTT2ERROR}, listed "
            f"below); WA, UA and the tables are over the other {total - len(errors)}"]


def listing(errors: dict[str, str], limit: int = 50) -> list[str]:
    """The result.txt lines naming each utterance that was not scored, with the decode's reason."""
    if not errors:
        return []
    lines = ["", f"not scored ({len(errors)}):"]
    lines += [f"  {utt}  {errors[utt]}" for utt in sorted(errors)[:limit]]
    if len(errors) > limit:
        lines.append(f"  ... and {len(errors) - limit} more (see {UTT2ERROR})")
    return lines
