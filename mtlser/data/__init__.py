"""Data between stages: the Kaldi data-dir contract, emotion inventories, folds, and training batches.

- :mod:`mtlser.data.datadir`: the contract (wav.scp, text, utt2spk, utt2emo, ...), its reader, writer and
  validator (``python -m mtlser.data.datadir validate DIR``); :mod:`mtlser.data.emotions`: the inventory;
  :mod:`mtlser.data.combine`: several corpora's dirs as one, on one inventory (cross-corpus);
- stage 2, the folds: :mod:`mtlser.data.split` (``python -m mtlser.data.split``) with the protocols of
  :mod:`mtlser.data.speaker_folds` and :mod:`mtlser.data.partition`, the audio check of
  :mod:`mtlser.data.audio_check`; every fold's dir name from :mod:`mtlser.data.fold_names`;
- training data: :mod:`mtlser.data.dataset` (a data dir as a Dataset, duration batches, padding),
  :mod:`mtlser.data.cnn_cache` (CNN features once per utterance when the CNN is frozen);
- the corpus preps that write ``data/all`` (stage 0) are not here: they live in :mod:`mtlser.corpora`.
"""
