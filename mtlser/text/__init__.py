"""Transcripts to CTC targets (stage 1, and per fold for bpe).

- :mod:`mtlser.text.tokenize`: one token type (phncls, phn, char, bpe), emotion-tagged or not, into
  ``text_<token set>`` of a data dir and its token list (``python -m mtlser.text.tokenize``); the token set's
  name (``token_set_name``) and the token list's path are defined there;
- :mod:`mtlser.text.g2p`: words to ARPAbet phones (g2p_en, offline; its NLTK data from
  :mod:`mtlser.text.nltk_data`); :mod:`mtlser.text.phone_classes`: phones to the paper's phoneme classes;
- :mod:`mtlser.text.bpe`: SentencePiece per fold, trained on the fold's training text only.
"""
