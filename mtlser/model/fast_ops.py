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
  CPU, and one host sync per batch (the lengths are read as Python ints).
- :func:`group_norm_gelu`: the same normalisation followed by the layer's GELU, as
  one autograd function over the whole batch (``backbone.cnn_norm_impl: fused``): the
  valid frames are a mask built on the device (no host sync, no per-row loop), and
  backward recomputes the normalised values from the saved input instead of keeping
  the norm's output for GELU's backward: one (B, C, T) tensor less per step, the
  largest activation of a CNN-trained step (16 x 512 x 64,000 at 16 x 20 s).
- :func:`cnn_conv`: a CNN layer's Conv1d, optionally run as a Conv2d in channels-last
  memory layout (``backbone.cnn_channels_last``): the layout cuDNN's tensor-core kernels
  prefer; the output is then (B, C, T) with frames outermost, so the transformer's
  (B, T, C) input needs no copy.

Each is checked against the reference modules in tests/test_speed.py.
"""

from __future__ import annotations

import contextlib

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


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)``, but never ``t`` itself returned through ``.to``: torch.compile (2.11) loses the
    gradient of an autograd.Function whose output is a no-op ``.to`` of an internal tensor."""
    return t if t.dtype == dtype else t.to(dtype)


class _GroupNormGELU(torch.autograd.Function):
    """gelu(GroupNorm over each row's valid frames), padded frames -> 0; batched, no host sync.

    Statistics and arithmetic in float32 (float64 stays float64), output in the input's dtype.
    Saves the input, the mask and the per-(row, group) statistics; backward recomputes the rest.
    Written as per-(row, channel) scale and shift on few full-size buffers, updated in place:
    on CPUs a fresh (B, C, T) allocation costs more than the arithmetic on it.
    """

    @staticmethod
    def forward(ctx, x, mask, weight, bias, groups: int, eps: float):
        # x (B, C, T); mask (B, 1, T) of 0/1 in the compute dtype, or None (every frame valid).
        B, C, T = x.shape
        G, Cg = groups, C // groups
        cdt = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(cdt)  # x itself when it is float32 already
        if mask is None:
            count = xf.new_full((B, 1), float(T * Cg))
            s1 = xf.sum(-1)  # (B, C)
        else:
            count = (mask[:, 0].sum(-1, keepdim=True) * Cg).clamp(min=1)  # (B, 1); an empty row gives zeros
            s1 = torch.bmm(xf, mask.transpose(1, 2))[..., 0]  # (B, C): sum over the valid frames
        mean = s1.unflatten(1, (G, Cg)).sum(-1) / count  # (B, G)
        mean_c = mean.repeat_interleave(Cg, 1)[..., None]  # (B, C, 1)
        out = xf - mean_c  # the one full-size buffer: centred, then normalised, then the output
        if mask is not None:
            out.mul_(mask)
        var = torch.linalg.vector_norm(out, dim=-1).square().unflatten(1, (G, Cg)).sum(-1) / count  # (B, G)
        rstd = torch.rsqrt(var + eps)
        scale = rstd.repeat_interleave(Cg, 1)[..., None]  # (B, C, 1)
        if weight is not None:
            scale = scale * weight.to(cdt)[:, None]
        out.mul_(scale)
        if bias is not None:
            out.add_(bias.to(cdt)[:, None])
        torch.ops.aten.gelu_(out)
        if mask is not None:
            out.mul_(mask)
        ctx.save_for_backward(x, mask, weight, bias, mean, rstd)
        ctx.groups = groups
        return _cast(out, x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, mask, weight, bias, mean, rstd = ctx.saved_tensors
        B, C, T = x.shape
        G, Cg = ctx.groups, C // ctx.groups
        cdt = mean.dtype
        xf = x.to(cdt)
        if mask is None:
            count = xf.new_full((B, 1), float(T * Cg))
        else:
            count = (mask[:, 0].sum(-1, keepdim=True) * Cg).clamp(min=1)
        mean_c = mean.repeat_interleave(Cg, 1)[..., None]  # (B, C, 1)
        rstd_c = rstd.repeat_interleave(Cg, 1)[..., None]
        w = weight.to(cdt)[:, None] if weight is not None else None  # (C, 1)
        a = rstd_c * w if w is not None else rstd_c  # (B, C, 1): d y / d x at fixed statistics
        xc = xf - mean_c  # buffer 1: x - mean
        gy = torch.addcmul(bias.to(cdt)[:, None] if bias is not None else xc.new_zeros(()), xc, a)  # buffer 2: y
        # y -> d loss / d y through the exact (erf) GELU, in place
        torch.ops.aten.gelu_backward.grad_input(grad_out.to(cdt), gy, grad_input=gy)
        if mask is not None:
            gy.mul_(mask)
        sg = gy.sum(-1, keepdim=True)  # (B, C, 1): sum_t dL/dy
        sgx = xc.mul_(gy).sum(-1, keepdim=True) * rstd_c  # (B, C, 1): sum_t dL/dy * x-hat (xc is spent)
        # Every gradient, whether asked for or not: the cheap ones are (B, C) sums, and x's is always
        # wanted where this runs (a trained CNN); torch.compile's tracing of ctx.needs_input_grad is unreliable.
        gw = sgx.sum((0, 2)) if weight is not None else None
        gb = sg.sum((0, 2)) if bias is not None else None
        # dx = rstd * (w dy - mean_group(w dy) - x-hat * mean_group(w dy x-hat)), on valid frames
        s1 = (sg * w if w is not None else sg)[..., 0].unflatten(1, (G, Cg)).sum(-1) / count  # (B, G)
        s2 = (sgx * w if w is not None else sgx)[..., 0].unflatten(1, (G, Cg)).sum(-1) / count
        k1 = -(rstd * s2).repeat_interleave(Cg, 1)[..., None] * rstd_c  # (B, C, 1): times (x - mean)
        k0 = -(rstd * s1).repeat_interleave(Cg, 1)[..., None]
        gx = torch.sub(xf, mean_c, out=xc)  # buffer 1 again: x - mean
        gx.mul_(k1).addcmul_(gy, a).add_(k0)
        if mask is not None:
            gx.mul_(mask)
        return (_cast(gx, x.dtype), None, _cast(gw, weight.dtype) if gw is not None else None,
                _cast(gb, bias.dtype) if gb is not None else None, None, None)


def _group_norm_gelu_composed(x: Tensor, mask: Tensor | None, weight: Tensor | None, bias: Tensor | None,
                              groups: int, eps: float) -> Tensor:
    """:class:`_GroupNormGELU`'s maths in differentiable torch ops: what torch.compile traces (it fuses
    them and chooses itself what backward keeps; it mishandles the in-place updates of the function)."""
    B, C, T = x.shape
    Cg = C // groups
    cdt = torch.promote_types(x.dtype, torch.float32)
    xg = x.to(cdt).unflatten(1, (groups, Cg))  # (B, G, C/G, T)
    m = mask.unsqueeze(1) if mask is not None else None  # (B, 1, 1, T)
    count = (m.sum(-1, keepdim=True) * Cg).clamp(min=1) if m is not None else float(T * Cg)
    mean = (xg * m if m is not None else xg).sum((2, 3), keepdim=True) / count
    d = (xg - mean) * m if m is not None else xg - mean
    y = (d * torch.rsqrt(d.square().sum((2, 3), keepdim=True) / count + eps)).flatten(1, 2)  # (B, C, T)
    if weight is not None:
        y = y * weight.to(cdt)[:, None]
    if bias is not None:
        y = y + bias.to(cdt)[:, None]
    out = F.gelu(y)
    return (out * mask if mask is not None else out).to(x.dtype)


def group_norm_gelu(x: Tensor, lengths: Tensor | None, norm: nn.GroupNorm) -> Tensor:
    """``gelu(valid_group_norm(x, lengths, norm))`` in one batched autograd function (no host sync).

    Args:
        x: (B, C, T) conv output (any strides: channels-last works as is).
        lengths: (B,) valid frames as a tensor on x's device, or None (every frame valid: then
            exactly ``gelu(norm(x))``, GroupNorm over the whole padded batch).
        norm: the ``nn.GroupNorm`` whose groups, eps and affine parameters are used.
    Returns:
        (B, C, T) in x's dtype; padded frames are 0 (as :func:`valid_group_norm` then GELU gives).
    """
    assert x.ndim == 3, tuple(x.shape)
    mask = None
    if lengths is not None:
        assert isinstance(lengths, Tensor) and lengths.shape == (x.shape[0],), (tuple(x.shape), lengths)
        cdt = torch.promote_types(x.dtype, torch.float32)
        mask = (torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None]).to(cdt)[:, None, :]
    args = (x, mask, norm.weight, norm.bias, norm.num_groups, norm.eps)
    if torch.compiler.is_compiling():
        return _group_norm_gelu_composed(*args)
    return _GroupNormGELU.apply(*args)


def cnn_conv(conv: nn.Conv1d, x: Tensor, channels_last: bool = False) -> Tensor:
    """A CNN layer's convolution: ``conv(x)``, or the same as a Conv2d in channels-last layout.

    Args:
        x: (B, C_in, S) input.
    Returns:
        (B, C_out, S'); with ``channels_last`` its memory is (B, S', C_out) (strides (S' C, 1, C)).
    """
    if not channels_last:
        return conv(x)
    assert conv.padding in ((0,), 0) and conv.dilation == (1,) and conv.groups == 1, conv
    cl = torch.channels_last
    y = F.conv2d(x.unsqueeze(2).contiguous(memory_format=cl), conv.weight.unsqueeze(2).contiguous(memory_format=cl),
                 conv.bias, stride=(1, conv.stride[0]))
    return y.squeeze(2)


def can_prepack_bf16() -> bool:
    """Whether oneDNN can hold linear weights prepacked for bf16 here (torch's mkldnn ops, as inductor uses)."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise") and bool(getattr(ops, "_is_mkldnn_bf16_supported", lambda: False)()))


def padded_rows(m: int) -> int:
    """The row count a prepacked product runs with for ``m`` rows: the next of 8 sizes per octave, at least 64."""
    if m <= 64:
        return 64
    step = (1 << (m.bit_length() - 1)) // 8
    return -(-m // step) * step


class PackedLinear(nn.Module):
    """``F.linear`` (then GELU, with ``activation="gelu"``) for CPU inference in ``dtype``, the weight stored once
    in that dtype and, for bf16 where oneDNN can, prepacked in its blocked (AMX/AVX-512) layout with the GELU as
    the product's post-op: a plain bf16 ``F.linear`` reorders the weight on every call (prepacked, the
    transformer's products ran 1.3-1.6x faster on one thread). The input is cast to ``dtype`` (as autocast
    would); the output is in ``dtype``."""

    def __init__(self, weight: Tensor, bias: Tensor | None, dtype: torch.dtype, activation: str = "none"):
        super().__init__()
        assert activation in ("none", "gelu"), activation
        self.dtype, self.activation = dtype, activation
        self.out_features, self.in_features = weight.shape
        self.weight = weight.detach().to(dtype).contiguous()
        self.bias = bias.detach().to(dtype) if bias is not None else None
        self.packed = None
        if dtype == torch.bfloat16 and can_prepack_bf16():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)
            self.weight = None  # the packed copy is the one used

    @classmethod
    def of(cls, linear: nn.Linear, dtype: torch.dtype, activation: str = "none") -> "PackedLinear":
        return cls(linear.weight, linear.bias, dtype, activation)

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.dtype)
        if self.packed is None:
            y = F.linear(x, self.weight, self.bias)
            return F.gelu(y) if self.activation == "gelu" else y
        # oneDNN compiles a kernel for every new number of rows (13 ms each here, AMX), and every recording
        # has its own length: the rows are padded to a ladder of 8 sizes per octave (at most 12.5 % more), so a run
        # meets few shapes, each compiled once. (Fixed pieces of 1024 rows compiled fewer, but ran ~1.5x slower.)
        lead, K = x.shape[:-1], x.shape[-1]
        rows = x.reshape(-1, K)
        m = rows.shape[0]
        padded = padded_rows(m)
        if padded != m:
            rows = F.pad(rows, (0, 0, 0, padded - m))
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, self.activation, [], "none")
        return out[:m].reshape(*lead, self.out_features)


class PackedFeedForward(nn.Module):
    """torchaudio's transformer FeedForward at inference (dropout off): two :class:`PackedLinear`, the GELU fused
    into the first."""

    def __init__(self, feed_forward: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.intermediate = PackedLinear.of(feed_forward.intermediate_dense, dtype, activation="gelu")
        self.output = PackedLinear.of(feed_forward.output_dense, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.intermediate(x))


class PosConvAsMatmuls(nn.Module):
    """torchaudio's ConvolutionalPositionalEmbedding (a grouped Conv1d, GELU) for CPU inference in ``dtype``:
    per group, the K-frame windows of its channels as rows of one matrix product (:class:`PackedLinear`).

    Not oneDNN's bf16 grouped Conv1d: in torch 2.11 it gave wrong answers for some shapes (8 channels per
    group, kernel 16: 86 % relative error; 48 per group, kernel 128 was right), and a kernel is not to be
    trusted per shape. Not the float32 convolution either: at wav2vec2-base size it was a third of a bf16 file's
    time. The weight norm is folded in once. (B, T, D) in, (B, T, D) out, in ``dtype``.
    """

    def __init__(self, pos_conv: nn.Module, dtype: torch.dtype):
        super().__init__()
        conv = pos_conv.conv
        assert conv.stride == (1,) and conv.dilation == (1,), conv
        self.groups, self.kernel, self.padding = conv.groups, conv.kernel_size[0], conv.padding[0]
        self.num_remove = pos_conv.num_remove
        weight = conv.weight.detach()  # (D, D / G, K); the weight norm's product
        c_out, c_in, K = weight.shape[0] // self.groups, weight.shape[1], self.kernel
        bias = conv.bias.detach() if conv.bias is not None else None
        # Column k * c_in + c of group g's (c_out, K * c_in) weight meets frame t + k, channel g * c_in + c: a
        # window is K runs of c_in contiguous values (gathering it the other way round, c-major, took 3x longer).
        self.linears = nn.ModuleList(
            PackedLinear(weight[g * c_out:(g + 1) * c_out].permute(0, 2, 1).reshape(c_out, K * c_in),
                         bias[g * c_out:(g + 1) * c_out] if bias is not None else None, dtype)
            for g in range(self.groups))
        self.c_in, self.c_out, self.dtype = c_in, c_out, dtype

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        xp = F.pad(x.to(self.dtype), (0, 0, self.padding, self.padding))  # (B, T + 2P, D)
        T_out = T + 2 * self.padding - self.kernel + 1 - self.num_remove
        out = xp.new_empty((B, T_out, self.groups * self.c_out))
        for g, linear in enumerate(self.linears):
            windows = xp[:, :, g * self.c_in:(g + 1) * self.c_in].unfold(1, self.kernel, 1)[:, :T_out].transpose(2, 3)
            out[:, :, g * self.c_out:(g + 1) * self.c_out] = linear(windows.reshape(B, T_out, -1))
        return F.gelu(out)


class CnnMatrices:
    """The CNN's convolutions as linear maps of K-frame windows for :func:`cnn_as_matmuls`.

    The first layer (one input channel: the waveform) stays float32, the others take ``dtype``: the first
    layer's ten taps are nearly free either way, and the waveform keeps its 24 bits of mantissa.
    """

    def __init__(self, extractor: nn.Module, dtype: torch.dtype):
        self.dtype = dtype
        self.layers = []
        for i, layer in enumerate(extractor.conv_layers):
            conv = layer.conv
            assert conv.padding in ((0,), 0) and conv.dilation == (1,) and conv.groups == 1, conv
            K, stride = conv.kernel_size[0], conv.stride[0]
            # Column k * C_in + c of the (C_out, K * C_in) weight meets input frame t * stride + k, channel c.
            weight = conv.weight.detach().permute(0, 2, 1).reshape(conv.out_channels, K * conv.in_channels)
            # Without a norm between them, the GELU runs as the product's post-op.
            activation = "gelu" if i > 0 and layer.layer_norm is None else "none"
            linear = PackedLinear(weight, conv.bias, torch.float32 if i == 0 else dtype, activation)
            self.layers.append((linear, K, stride, layer.layer_norm))


def cnn_as_matmuls(matrices: CnnMatrices, waveforms: Tensor) -> Tensor:
    """torchaudio's FeatureExtractor on an unpadded batch, each Conv1d as one matrix product in channels-last
    layout: (B, S) samples -> (B, T, C) features.

    An output frame's window is K consecutive input frames, one contiguous run of K * C values in (T, C)
    memory, so the windows are a strided view of the input and the convolution is ``windows @ matrix``. On a
    CPU that is a single large GEMM per layer (AMX/AVX-512 in bf16), where oneDNN's Conv1d spends as long
    again reordering (B, C, T) activations as it does convolving them. The norm (GroupNorm over each channel's
    frames, or a per-frame LayerNorm) is computed in float32; the features come out in the matrices' dtype.
    Inference only: no padding (a GroupNorm's statistics span the whole row), no autograd.
    """
    x = waveforms.unsqueeze(-1)  # (B, S, 1)
    layers = matrices.layers
    for i, (linear, K, stride, norm) in enumerate(layers):
        B, T, C = x.shape
        T_out = (T - K) // stride + 1
        x = x.contiguous()
        windows = x.as_strided((B, T_out, K * C), (x.stride(0), stride * C, 1))
        next_dtype = layers[i + 1][0].dtype if i + 1 < len(layers) else matrices.dtype
        if i == 0 and isinstance(norm, nn.GroupNorm):
            with torch.autocast(device_type=x.device.type, enabled=False):  # float32, as the matrix is
                x = _first_layer_group_norm(windows, linear, norm, next_dtype)
            continue
        if isinstance(norm, nn.GroupNorm):
            raise AssertionError("cnn_as_matmuls covers a GroupNorm in the first layer only (wav2vec2's group_norm)")
        first = torch.autocast(device_type=x.device.type, enabled=False) if i == 0 else contextlib.nullcontext()
        with first:  # the first layer in float32, as its matrix is
            x = linear(windows)  # (B, T_out, C_out), the GELU applied when there is no norm
        if norm is not None:
            x = F.gelu(F.layer_norm(x.float(), norm.normalized_shape, norm.weight, norm.bias, norm.eps).to(next_dtype))
    return x


#: Frames of the first layer's output computed at once: a few MB per piece, in cache and below glibc's mmap
#: threshold (a fresh 40 MB tensor per call costs more in page faults than its arithmetic).
FIRST_LAYER_PIECE = 2048


def _first_layer_group_norm(windows: Tensor, linear: PackedLinear, norm: nn.GroupNorm, dtype: torch.dtype) -> Tensor:
    """gelu(GroupNorm(conv(x))) of a one-channel first layer, the norm folded into the convolution.

    The conv is linear in its K-sample windows, so each output channel's mean and variance over the frames
    follow from the windows' K-vector mean and K x K covariance (float64): mean_c = w_c . m, var_c = w_c' S w_c.
    The normalisation is then a per-row scale of the matrix and a shift: one pass over the layer's output
    (the largest activation of the model) instead of three.
    """
    assert norm.num_groups == norm.num_channels, "one group per channel (wav2vec2's group_norm)"
    B, T_out, K = windows.shape
    w64 = linear.weight.double().t()  # (K, C)
    win64 = windows.double()
    m = win64.mean(1)  # (B, K)
    cov = win64.transpose(1, 2) @ win64 / T_out - m[:, :, None] * m[:, None, :]  # (B, K, K)
    # A conv bias adds to every frame and to the mean alike: the norm removes it, so it is not used.
    mean = m @ w64  # (B, C), of the products without bias
    var = torch.einsum("kc,bkl,lc->bc", w64, cov, w64).clamp_min(0.0)
    scale = torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = (norm.bias.double() if norm.bias is not None else 0.0) - mean * scale
    mats = (w64[None] * scale[:, None, :]).float()  # (B, K, C)
    shift = shift.float()[:, None, :]  # (B, 1, C)
    out = windows.new_empty((B, T_out, w64.shape[1]), dtype=dtype)
    for start in range(0, T_out, FIRST_LAYER_PIECE):
        piece = windows[:, start:start + FIRST_LAYER_PIECE]
        out[:, start:start + piece.shape[1]] = F.gelu(torch.baddbmm(shift, piece, mats))
    return out
