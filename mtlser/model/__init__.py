"""The paper's model and its parts: backbone -> layer fusion -> emotion head (CE) + CTC head.

- :mod:`mtlser.model.ser_model`: :class:`~mtlser.model.ser_model.SERModel` and ``build_model(cfg, vocab_size)``,
  the objective L = CE + lambda * CTC (blank = token 0);
- :mod:`mtlser.model.backbone`: wav2vec2, HuBERT, WavLM on torchaudio's components, with their layer states
  (0 = the feature projection's output, 1..N = the transformer layers); shapes as data in
  :mod:`mtlser.model.architectures`, the CNN's length arithmetic in :mod:`mtlser.model.lengths`;
- :mod:`mtlser.model.checkpoints` and :mod:`mtlser.model.safe_load`: pretrained weights from the user's local
  copy (fairseq, Hugging Face, torchaudio formats) without running code from the file;
- :mod:`mtlser.model.fast_ops`: same-maths replacements (padding-invariant group norm, FFT positional conv).
"""
