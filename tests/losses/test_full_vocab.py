"""distill.losses.full_vocab: the exact full-vocabulary divergence of `distill onpolicy --loss full`.

Chunked equals naive (values and gradients), a teacher as its own student gets exactly 0 and no gradient,
padded output layers compare on the shared rows plus one bucket per side, and the peak memory does not grow
with the number of positions.
"""

from __future__ import annotations

import functools

import pytest
import torch

from distill.losses import measure_peak_memory
from distill.losses.full_vocab import full_vocab_kd
from distill.losses.kd import divergence

N, H_S, H_T, V = 29, 8, 12, 40


def models(seed: int = 0, v_s: int = V, v_t: int = V, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(N, H_S, generator=g, dtype=dtype).requires_grad_()
    ws = (torch.randn(v_s, H_S, generator=g, dtype=dtype) * 0.7).requires_grad_()
    ht = torch.randn(N, H_T, generator=g, dtype=dtype)
    wt = torch.randn(v_t, H_T, generator=g, dtype=dtype) * 0.7
    return hs, ws, ht, wt


def naive(hs, ws, ht, wt, kd: str, beta: float, temperature: float) -> torch.Tensor:
    """The reference: whole (N, V) log-softmaxes, one divergence call (shared rows only, no padding)."""
    log_q = torch.log_softmax(hs @ ws.T / temperature, -1)
    log_p = torch.log_softmax(ht @ wt.T / temperature, -1)
    return divergence(log_p, log_q, kd, beta, None)


@pytest.mark.parametrize("kd", ["forward", "reverse", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_chunked_equals_the_whole_vocabulary_at_once(kd: str, temperature: float) -> None:
    hs, ws, ht, wt = models()
    want = naive(hs, ws, ht, wt, kd, 0.3, temperature)
    (want_h, want_w) = torch.autograd.grad(want.sum(), (hs, ws))
    for chunk in (None, 5, 1):
        got = full_vocab_kd(hs, ws, ht, wt, kd=kd, beta=0.3, temperature=temperature, chunk_size=chunk)
        assert got.shape == (N,) and torch.allclose(got, want, rtol=1e-12, atol=1e-14), chunk
        got_h, got_w = torch.autograd.grad(got.sum(), (hs, ws))
        assert torch.allclose(got_h, want_h, rtol=1e-10, atol=1e-13) and torch.allclose(got_w, want_w, rtol=1e-10)
    assert (want > 0).all()  # different models: something to learn at every position


@pytest.mark.parametrize("kd", ["forward", "reverse", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_teacher_as_its_own_student_gets_exactly_zero_and_no_gradient(
    kd: str, temperature: float, dtype: torch.dtype
) -> None:
    hs, ws, _, _ = models(dtype=dtype)
    # near-certain rows too (most tokens of a reasoning trace), where p underflows far below any teacher floor
    sharp = torch.zeros(N, H_S, dtype=dtype)
    sharp[:, 0] = 60.0
    hidden = torch.cat([hs.detach(), sharp]).requires_grad_()
    got = full_vocab_kd(hidden, ws, hidden.detach(), ws.detach(), kd=kd, temperature=temperature, chunk_size=7)
    assert torch.equal(got, torch.zeros_like(got))
    grad_h, grad_w = torch.autograd.grad(got.sum(), (hidden, ws))
    assert torch.equal(grad_h, torch.zeros_like(grad_h)) and torch.equal(grad_w, torch.zeros_like(grad_w))


def test_padded_output_layers_compare_the_shared_rows_and_one_bucket_each() -> None:
    hs, ws, ht, wt = models(v_s=V + 3, v_t=V + 7)
    got = full_vocab_kd(hs, ws, ht, wt, kd="forward", vocab=V)
    log_q, log_p = torch.log_softmax(hs @ ws.T, -1), torch.log_softmax(ht @ wt.T, -1)
    buckets = lambda x: torch.cat([x[:, :V], x[:, V:].logsumexp(-1, keepdim=True)], -1)  # noqa: E731
    want = (buckets(log_p).exp() * (buckets(log_p) - buckets(log_q))).sum(-1)
    assert torch.allclose(got, want, rtol=1e-12)
    # the same model padded differently: its padding rows carry no mass (−inf logits), so the divergence is 0
    padded = torch.cat([ws.detach(), torch.zeros(5, H_S, dtype=ws.dtype)])
    bias = torch.cat([torch.zeros(V + 3, dtype=ws.dtype), torch.full((5,), -torch.inf, dtype=ws.dtype)])
    same = full_vocab_kd(hs, ws, hs.detach(), padded, kd="reverse", vocab=V, teacher_bias=bias)
    assert torch.allclose(same, torch.zeros_like(same), atol=1e-12)


def test_bad_arguments_are_named() -> None:
    hs, ws, ht, wt = models()
    with pytest.raises(ValueError, match="kd must be one of forward, reverse, jsd, got 'sampled'"):
        full_vocab_kd(hs, ws, ht, wt, kd="sampled")
    with pytest.raises(ValueError, match="29 positions and teacher_hidden 3"):
        full_vocab_kd(hs, ws, ht[:3], wt)
    with pytest.raises(ValueError, match=r"vocab must be in \[1, 40\]"):
        full_vocab_kd(hs, ws, ht, wt, vocab=41)
    empty = full_vocab_kd(hs[:0], ws, ht[:0], wt)
    assert empty.shape == (0,)


@pytest.mark.slow
def test_peak_memory_depends_on_the_chunk_not_on_the_positions() -> None:
    """Neither side's (N, V) logits are held: quadrupling N leaves the peak at a few (chunk, V) buffers."""
    vocab, h, chunk = 16_384, 32, 64
    g = torch.Generator().manual_seed(0)
    ws = (torch.randn(vocab, h, generator=g) * 0.05).requires_grad_()
    wt = torch.randn(vocab, h, generator=g) * 0.05
    peaks = {}
    for n in (1024, 4096):
        hs, ht = torch.randn(n, h, generator=g).requires_grad_(), torch.randn(n, h, generator=g)

        def step(hs: torch.Tensor = hs, ht: torch.Tensor = ht) -> None:
            full_vocab_kd(hs, ws, ht, wt, kd="reverse", chunk_size=chunk).sum().backward()

        peaks[n] = measure_peak_memory(functools.partial(step))
    chunk_bytes, logits_bytes = chunk * vocab * 4, 4096 * vocab * 4
    assert peaks[4096] < 12 * chunk_bytes < logits_bytes / 5  # measured: ~10 chunk buffers, 39 MiB of 256
    assert peaks[4096] < peaks[1024] + 4 * 4096 * h * 4  # only what scales with N (hidden states, grads) grows
