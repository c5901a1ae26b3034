"""S4D (Gu, Gupta, Goel & Re 2022, "On the Parameterization and Initialization of Diagonal State
Space Models"): a linear time-invariant diagonal complex SSM per channel.

    u = conv(x W_in)                                    [B, T, E]      E = expand_v * d_model
    per channel e and mode n < N/2 (N = d_state):       A_en = -exp(A_log_re_en) + i A_im_en
        dt_e = exp(log_dt_e);  dA = exp(dt A);  dB = (dA - 1) / A       (ZOH, B = 1)
        h_t = dA h_{t-1} + dB u_t;   y_t = 2 Re(C . h_t) + D u_t        (h: N/2 complex per channel)
    kernel (closed form):  Kbar_l = 2 Re(sum_n C_n dB_n dA_n^l),  y = Kbar * u + D u (causal)
    out = W_out GLU-or-linear(gelu(y))                  (use_output_gate: GLU, as in S4D's block)

Init (`s4d_init`): "lin" A_n = -1/2 + i pi n (S4D-Lin); "inv" A_n = -1/2 + i (N/pi)(N/(2n+1) - 1)
(S4D-Inv). C ~ complex normal (variance 1), log dt uniform in [log dt_min, log dt_max], D = 1.

Three ways to compute the same map, all exact (float32 / complex64):
- no segment_ids, no cache (training): the causal convolution with the closed-form kernel, by FFT
  (`jnp.fft.rfft` of length next_pow2(2T));
- segment_ids (packed rows): an FFT convolution cannot reset at a segment start, so the chunked
  form runs instead: within chunks of `chunk_size` positions a [C, C] Toeplitz of the kernel
  masked to same-segment pairs, across chunks the complex modal state h (reset where the segment
  changes) carried by a scan. This is exact and O(T C E + T E N) work;
- cache (prefill / decode): the same chunked recurrence from the cached state h, returning the
  new h (one step per token at decode).

The decode state is h, N/2 complex numbers per channel, stored as float32 [B, E, N/2, 2]
(real, imaginary): `state_size()` = E * N floats.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.config import ModelConfig
from research.layers import common

F32 = jnp.float32
PREC = jax.lax.Precision.HIGHEST


def s4d_imag_init(kind: str, d_state: int) -> np.ndarray:
    """Imaginary parts of A for the N/2 modes, float32 [N/2]: S4D-Lin ("lin") or S4D-Inv ("inv")."""
    n = np.arange(d_state // 2, dtype=np.float64)
    if kind == "lin":
        return (math.pi * n).astype(np.float32)
    if kind == "inv":
        return (d_state / math.pi * (d_state / (2 * n + 1) - 1)).astype(np.float32)
    raise ValueError(f"s4d_init must be 'lin' or 'inv', got {kind!r}")


def ssm_kernel(dtA, Ct, length: int):
    """The closed-form convolution kernel Kbar [E, length] float32: 2 Re(sum_n Ct_n exp(dtA_n l)).

    dtA, Ct: complex [E, N/2] (dt A and C dB)."""
    vander = jnp.exp(dtA[..., None] * jnp.arange(length, dtype=F32))  # [E, N/2, L]
    return 2.0 * jnp.real(jnp.einsum("en,enl->el", Ct, vander, precision=PREC))


def fft_conv(u, kernel):
    """Causal convolution y_t = sum_{l <= t} kernel[:, l] u_{t-l}: u [B, T, E], kernel [E, T]."""
    T = u.shape[1]
    n = common.next_pow2(2 * T)
    uf = jnp.fft.rfft(u.astype(F32), n=n, axis=1)
    kf = jnp.fft.rfft(kernel.T, n=n, axis=0)
    return jnp.fft.irfft(uf * kf[None], n=n, axis=1)[:, :T]


def chunked_ssm(u, dtA, Ct, *, chunk_size: int, h0=None, segment_ids=None):
    """The recurrence h_t = dA h_{t-1} + u_t (reset where segment_ids changes), y_t = 2 Re(Ct . h_t),
    in chunks of C positions; ZOH's dB is folded into Ct.

    u: [B, T, E] float; dtA, Ct: complex [E, N/2]; h0: complex [B, E, N/2] or None;
    segment_ids: int [B, T] or None. Returns (y [B, T, E] float32, h_T complex [B, E, N/2]).
    Within a chunk: the masked Toeplitz of the kernel; across chunks: a scan of the chunk-end
    states (decay dA^C, zero across a reset). Every power dA^l has |dA^l| <= 1.
    """
    B, T, E = u.shape
    N2 = dtA.shape[-1]
    C = chunk_size
    pad = -T % C
    Nc = (T + pad) // C
    uc = jnp.pad(u.astype(F32), ((0, 0), (0, pad), (0, 0))).reshape(B, Nc, C, E)
    pw = jnp.exp(dtA[..., None] * jnp.arange(C + 1, dtype=F32))  # dA^l, [E, N/2, C+1]
    taps = 2.0 * jnp.real(jnp.einsum("en,enl->el", Ct, pw[..., :C], precision=PREC))  # [E, C]
    lag = jnp.arange(C)[:, None] - jnp.arange(C)[None, :]
    toeplitz = jnp.where(lag >= 0, taps[:, jnp.clip(lag, 0, C - 1)], 0.0)  # [E, C(i), C(j)]
    if segment_ids is None:
        first = last = None
        carry = jnp.ones((B, Nc), F32)
        y = jnp.einsum("eij,bnje->bnie", toeplitz, uc, precision=PREC)
    else:
        ids = jnp.pad(segment_ids, ((0, 0), (0, pad)), mode="edge").reshape(B, Nc, C)
        prev = jnp.concatenate([ids[:, :1, 0], ids[:, :-1, -1]], axis=1)  # id before each chunk
        if h0 is not None:  # the initial state belongs to the first segment
            prev = prev.at[:, 0].set(ids[:, 0, 0])
        first = (ids == prev[..., None]).astype(F32)  # the entering state reaches i
        last = (ids == ids[..., -1:]).astype(F32)  # i reaches the chunk's end
        carry = first[..., -1]
        same = (ids[..., :, None] == ids[..., None, :]).astype(F32)
        y = jnp.einsum("bnij,eij,bnje->bnie", same, toeplitz, uc, precision=PREC)
    to_end = pw[..., C - 1::-1]  # dA^(C-1-j), [E, N/2, C]
    ue = uc if last is None else uc * last[..., None]
    upd = jnp.einsum("emj,bnje->bnem", to_end, ue.astype(to_end.dtype), precision=PREC)
    dec = pw[..., C][None, None] * carry[..., None, None]  # [B, Nc, E, N/2]
    h_init = jnp.zeros((B, E, N2), pw.dtype) if h0 is None else h0.astype(pw.dtype)

    def step(h, x):
        d, a = x
        return d * h + a, h

    _, h_prev = jax.lax.scan(step, h_init, (jnp.moveaxis(dec, 1, 0), jnp.moveaxis(upd, 1, 0)))
    h_prev = jnp.moveaxis(h_prev, 0, 1)  # [B, Nc, E, N/2]: the state entering each chunk
    read = Ct[..., None] * pw[..., 1:]  # Ct dA^(i+1), [E, N/2, C]
    inter = 2.0 * jnp.real(jnp.einsum("emi,bnem->bnie", read, h_prev, precision=PREC))
    y = y + (inter if first is None else inter * first[..., None])
    # The state after the last real position r - 1 of the last chunk (r static).
    r = T - (Nc - 1) * C
    hl = h_prev[:, -1]
    ul = uc[:, -1, :r]  # [B, r, E]
    if segment_ids is not None:
        hl = hl * first[:, -1, r - 1][:, None, None]
        ul = ul * (ids[:, -1, :r] == ids[:, -1, r - 1:r]).astype(F32)[..., None]
    h_T = pw[..., r][None] * hl + jnp.einsum(
        "emj,bje->bem", pw[..., r - 1::-1][..., :r], ul.astype(pw.dtype), precision=PREC)
    return y.reshape(B, Nc * C, E)[:, :T], h_T


class S4D(nnx.Module):
    """S4D mixer. __call__(x [B, T, D]) -> (y [B, T, D], cache or None)."""

    name = "s4d"

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.d_model
        self.d_inner = E = int(round(d * cfg.knob(self.name, "expand_v")))
        if cfg.d_state % 2:
            raise ValueError(f"ModelConfig.d_state: s4d needs an even d_state (N/2 complex modes), "
                             f"got d_state={cfg.d_state}")
        self.d_state = cfg.d_state
        N2 = cfg.d_state // 2
        self.use_output_gate = cfg.knob(self.name, "use_output_gate")
        self.in_proj = common.linear(cfg, d, E, rngs=rngs)
        self.conv = common.short_conv(cfg, E, rngs=rngs)
        k_dt, k_c = jax.random.split(rngs.params())
        lo, hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
        ax = lambda *n, shape: common.axes(*n, shape=shape)  # noqa: E731
        self.log_dt = nnx.Param(jax.random.uniform(k_dt, (E,), F32, lo, hi), **ax("heads", shape=(E,)))
        self.A_log_re = nnx.Param(jnp.full((E, N2), math.log(0.5), F32), **ax("heads", None, shape=(E, N2)))
        imag = jnp.broadcast_to(jnp.asarray(s4d_imag_init(cfg.s4d_init, cfg.d_state)), (E, N2))
        self.A_im = nnx.Param(jnp.asarray(imag, F32), **ax("heads", None, shape=(E, N2)))
        c = jax.random.normal(k_c, (2, E, N2), F32) * math.sqrt(0.5)
        self.C_re = nnx.Param(c[0], **ax("heads", None, shape=(E, N2)))
        self.C_im = nnx.Param(c[1], **ax("heads", None, shape=(E, N2)))
        self.D = nnx.Param(jnp.ones((E,), F32), **ax("heads", shape=(E,)))
        self.o_proj = common.linear(cfg, E, 2 * d if self.use_output_gate else d, rngs=rngs,
                                    names=("heads", "embed"))

    def state_size(self, seq_len: int | None = None) -> int:
        """E * N floats per sequence (N/2 complex modes per channel)."""
        return self.d_inner * self.d_state

    def init_cache(self, batch_size: int, max_length: int):
        """{"state": float32 [B, E, N/2, 2] (h as real, imaginary), "conv": [B, W-1, E] (if conv)}."""
        state = jnp.zeros((batch_size, self.d_inner, self.d_state // 2, 2), F32)
        return common.recurrent_cache(self.conv, batch_size, state)

    def modes(self):
        """(dt A, C dB): complex64 [E, N/2] each (ZOH with B = 1)."""
        dt = jnp.exp(self.log_dt[...])
        A = jax.lax.complex(-jnp.exp(self.A_log_re[...]), self.A_im[...])
        dtA = dt[:, None] * A
        Ct = jax.lax.complex(self.C_re[...], self.C_im[...]) * jnp.expm1(dtA) / A
        return dtA, Ct

    def kernel(self, length: int):
        """The closed-form convolution kernel Kbar [E, length] float32."""
        return ssm_kernel(*self.modes(), length)

    def __call__(self, x, *, segment_ids=None, cache=None, pos=None):
        """x: [B, T, D]; segment_ids: [B, T] or None; cache: from init_cache or None."""
        T = x.shape[1]
        (u,), conv_cache = common.conv_parts(self.conv, [self.in_proj(x)], segment_ids=segment_ids,
                                             cache=cache)
        dtA, Ct = self.modes()
        state = None
        if cache is not None:
            h0 = jax.lax.complex(cache["state"][..., 0], cache["state"][..., 1])
            chunk = min(self.cfg.chunk_size, common.next_pow2(T))
            y, h = chunked_ssm(u, dtA, Ct, chunk_size=chunk, h0=h0)
            state = jnp.stack([jnp.real(h), jnp.imag(h)], axis=-1).astype(F32)
        elif segment_ids is not None:
            y, _ = chunked_ssm(u, dtA, Ct, chunk_size=self.cfg.chunk_size, segment_ids=segment_ids)
        else:
            y = fft_conv(u, ssm_kernel(dtA, Ct, T))
        y = jax.nn.gelu(y + u.astype(F32) * self.D[...], approximate=False).astype(u.dtype)
        out = self.o_proj(y)
        if self.use_output_gate:
            a, b = jnp.split(out, 2, axis=-1)
            out = a * jax.nn.sigmoid(b)
        return out, common.updated_cache(cache, state, conv_cache)
