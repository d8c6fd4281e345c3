"""Drop-in replacements for two wav2vec2 parts, same maths, faster or padding-proof.

- :func:`fft_pos_conv`: the positional convolution (a grouped Conv1d, kernel 128,
  16 groups in wav2vec2-base) computed by FFT. The direct grouped convolution is
  the slowest op of a wav2vec2-base training step on a GPU (cuDNN has no fast
  kernel for it); by FFT it is a batched complex matmul per frequency
  (~0.5 GFLOP per audio-second instead of ~0.5 GFLOP *per group pass* three times
  over). Computed in float32 whatever the autocast dtype; the weights stay those of
  the original module (weight norm included), so checkpoints are unchanged.
- :func:`valid_group_norm`: the GroupNorm of the CNN's first layer (``group_norm``
  extractor, wav2vec2-base/HuBERT-base) with its statistics taken over each
  utterance's valid frames only. ``nn.GroupNorm`` over a zero-padded batch makes an
  utterance's features depend on how much padding its batch mates brought; with
  this, a padded batch gives every utterance what it gets alone (as in
  pre-training, where fairseq crops batches instead of padding them). Torch's own
  GroupNorm kernels, one row at a time: about 2x the cost of one batched call on a
  CPU; a fused kernel is the next step if GPU profiles show it matters.

Both are checked against the reference modules in tests/test_speed.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: sizes cuFFT and pocketfft handle fastest."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def fft_pos_conv(x: Tensor, pos_conv: nn.Module) -> Tensor:
    """torchaudio's ``ConvolutionalPositionalEmbedding.forward`` by FFT.

    Args:
        x: (B, T, D) transformer input (padded frames already zeroed).
        pos_conv: the ``ConvolutionalPositionalEmbedding`` whose weights are used.
    Returns:
        (B, T, D) = gelu(grouped_conv(x)), the last output frame removed for even kernels, as the module does.
    """
    conv = pos_conv.conv
    B, T, D = x.shape
    G = conv.groups
    K = conv.kernel_size[0]
    P = conv.padding[0]
    assert D == conv.in_channels == conv.out_channels, (D, conv.in_channels, conv.out_channels)
    assert conv.stride[0] == 1 and conv.dilation[0] == 1, "fft_pos_conv covers stride 1, dilation 1 only"
    out_dtype = x.dtype
    cdt = torch.promote_types(x.dtype, torch.float32)  # float32 under autocast; float64 in tests
    C = D // G
    w = conv.weight.to(cdt)  # (D_out, C_in, K); the weight-norm parametrisation recomputes it here
    n_fft = _fast_len(T + K - 1)
    with torch.autocast(device_type=x.device.type, enabled=False):
        xs = x.to(cdt).transpose(1, 2).reshape(B, G, C, T)  # (B, G, C_in, T)
        Xf = torch.fft.rfft(xs, n=n_fft)  # (B, G, C_in, F)
        # Conv1d is a cross-correlation: convolve with the flipped kernel.
        Wf = torch.fft.rfft(w.flip(-1).reshape(G, C, C, K), n=n_fft)  # (G, C_out, C_in, F)
        # Per group and frequency a (C_out x C_in) matrix times the batch: (G, F, C_out, C_in) @ (G, F, C_in, B).
        Yf = torch.matmul(Wf.permute(0, 3, 1, 2), Xf.permute(1, 3, 2, 0))  # (G, F, C_out, B)
        y = torch.fft.irfft(Yf.permute(3, 0, 2, 1), n=n_fft)  # (B, G, C_out, n_fft)
        # Full convolution index n = t + K - 1 - P gives the conv's output t (0 <= t < T, zero padding P).
        y = y[..., K - 1 - P: K - 1 - P + T].reshape(B, D, T)
        if conv.bias is not None:
            y = y + conv.bias.to(cdt)[None, :, None]
        y = F.gelu(y)
    return y.transpose(1, 2).to(out_dtype)


class _ValidGroupNorm(torch.autograd.Function):
    """GroupNorm of each row's first L_i frames (torch's native kernels, row by row); padded frames -> 0.

    Computed in float32 whatever the input dtype (as autocast runs group_norm), returned in the
    input's dtype. Saves only its input and the per-row statistics.
    """

    @staticmethod
    def forward(ctx, x, lengths: list[int], weight, bias, groups: int, eps: float):
        B, C, T = x.shape
        y = x.new_zeros(x.shape)
        means, rstds = [], []
        cdt = torch.promote_types(x.dtype, torch.float32)  # float32 under autocast; float64 in tests
        w = weight.to(cdt) if weight is not None else None
        b = bias.to(cdt) if bias is not None else None
        for i, L in enumerate(lengths):
            if L == 0:
                means.append(x.new_zeros((1, groups), dtype=cdt))
                rstds.append(x.new_zeros((1, groups), dtype=cdt))
                continue
            xs = x[i:i + 1, :, :L].to(cdt).contiguous()
            out, mu, r = torch.native_group_norm(xs, w, b, 1, C, L, groups, eps)
            y[i, :, :L] = out[0]
            means.append(mu)
            rstds.append(r)
        ctx.save_for_backward(x, weight, torch.cat(means), torch.cat(rstds))
        ctx.lengths, ctx.groups, ctx.has_bias = lengths, groups, bias is not None
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, mean, rstd = ctx.saved_tensors
        B, C, T = x.shape
        dx = torch.zeros_like(x)
        cdt = mean.dtype
        w = weight.to(cdt) if weight is not None else None
        dw = torch.zeros(C, device=x.device, dtype=cdt) if weight is not None else None
        db = torch.zeros(C, device=x.device, dtype=cdt) if ctx.has_bias else None
        for i, L in enumerate(ctx.lengths):
            if L == 0:
                continue
            dxi, dwi, dbi = torch.ops.aten.native_group_norm_backward(
                gy[i:i + 1, :, :L].to(cdt).contiguous(), x[i:i + 1, :, :L].to(cdt).contiguous(),
                mean[i:i + 1], rstd[i:i + 1], w, 1, C, L, ctx.groups, [True, dw is not None, db is not None])
            dx[i, :, :L] = dxi[0]
            if dw is not None:
                dw += dwi
            if db is not None:
                db += dbi
        return (dx, None, dw.to(weight.dtype) if dw is not None else None,
                db.to(weight.dtype) if db is not None else None, None, None)


def valid_group_norm(x: Tensor, lengths: Tensor | list[int] | None, norm: nn.GroupNorm) -> Tensor:
    """``norm`` applied to each row's first ``lengths[i]`` frames alone; padded frames are set to 0.

    Args:
        x: (B, C, T) conv output.
        lengths: (B,) valid frames (a tensor or ints), or None (then exactly ``norm(x)``).
        norm: the ``nn.GroupNorm`` whose groups, eps and affine parameters are used.
    Returns:
        (B, C, T) in x's dtype (statistics and normalisation in float32). Nothing downstream reads
        the padded frames: a later conv's valid outputs only see valid inputs, and the encoder
        zeroes the rest.
    """
    if lengths is None:
        return norm(x)
    if isinstance(lengths, Tensor):
        lengths = lengths.tolist()  # one host sync per batch; the loop runs per row anyway
    assert x.ndim == 3 and len(lengths) == x.shape[0], (tuple(x.shape), len(lengths))
    assert max(lengths) <= x.shape[2], f"lengths {max(lengths)} > frames {x.shape[2]}"
    return _ValidGroupNorm.apply(x, [int(v) for v in lengths], norm.weight, norm.bias, norm.num_groups, norm.eps)
