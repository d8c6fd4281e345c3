"""The CNN length arithmetic (mtlser.model.lengths) against what torchaudio's CNN really outputs."""

import torch
import torchaudio

from mtlser.model import lengths


def test_default_spec_is_wav2vec2s():
    spec = lengths.conv_spec(None)
    assert spec == [(10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2)]
    assert lengths.receptive_field(spec) == 400
    assert lengths.hop(spec) == 320


def test_frames_and_receptive_field_match_torchaudio_cnn():
    config = [(4, 20, 10), (4, 8, 4), (4, 4, 4), (4, 4, 2)]  # the mini recipe's CNN
    extractor = torchaudio.models.wav2vec2.components._get_feature_extractor(
        "group_norm", config, bias=False)
    spec = lengths.conv_spec(config)
    rf = lengths.receptive_field(spec)
    for n in (rf - 1, rf, rf + 1, 1000, 4321, 16000):
        expected = extractor(torch.zeros(1, n), None)[0].shape[1] if n >= rf else 0
        assert lengths.num_frames(n, spec) == expected, n
    got = lengths.num_frames(torch.tensor([rf - 1, rf, 16000]), spec)
    assert got.tolist() == [0, 1, lengths.num_frames(16000, spec)]
