"""Scoring: a fold's decode dir against its references (fold), the folds of an experiment (aggregate, with
RESULTS.md and its plots from report), and experiments against each other (compare).

WA (accuracy) and UA (mean per-class recall) are computed per fold and averaged over folds (the paper's
protocol); the pooled figures over all test utterances are reported beside them. Utterances the decode
could not decode are reported, not scored (not_scored). The command line is ``python -m mtlser.score``.
"""
