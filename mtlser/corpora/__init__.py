"""Corpora: each release described once, prepared by one shared stage 0 (``data/all``).

    python -m mtlser.corpora <corpus> --db-root DIR --out data/all [options]
        # <corpus>: iemocap crema_d ravdess msp_podcast
    python -m mtlser.corpora <corpus> --help                                  # its options

A corpus is one short module here that declares ``CORPUS = Corpus(...)``
(:class:`mtlser.corpora.prep.Corpus`); :mod:`mtlser.corpora.prep` does the rest
(label map, missing and unreadable audio, durations, the data dir with its
emotion inventory, the report, the summary, the release-count warning, the
command line). A fourth corpus declares:

- ``name``, ``labels``: how messages name it, and its raw labels (the codes a
  label map under conf/emotions/<module>.yaml keeps and merges);
- ``scan(db_root, **options) -> Found``: its layout. Where the audio, labels and
  transcripts are, each utterance's id (speaker first, so ids sort by speaker),
  speaker rule and raw label, the files that are not utterances (``skipped``) and
  the corpus's own counts (``facts``); bad files are errors naming the file (and
  line);
- ``release_problems(report, emotion_map)``: its release totals, a line per count
  of a copy that differs (the helpers ``compare_counts``/``compare_totals`` write them);
- ``attributes`` and ``keep_unclassed`` for a corpus with dimensional labels (MSP-Podcast): the
  attribute declaration, and whether an utterance without a kept class stays for its attributes;
- ``db_root_help``, ``release_total``, and where needed ``items``, ``group_by``
  (a per-utterance table counted per value, e.g. IEMOCAP's utt2session),
  ``options`` (more command-line options, passed to ``scan``).

A recipe for it then calls ``python -m mtlser.corpora <module>`` in its
``local/data.sh``. :mod:`mtlser.corpora.mini_corpus` (with :mod:`mtlser.corpora.espeak`)
synthesises the embedded mini corpus in IEMOCAP's layout.

The ladder: this package reads data dirs and label maps (:mod:`mtlser.data`) and
cleans transcripts (:mod:`mtlser.text`); neither imports it.
"""
