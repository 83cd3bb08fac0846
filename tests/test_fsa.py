"""The FSA step on identical inputs against the naive N×N×C / row-by-row forms (1e-6)."""

import pytest
import torch

from fbseg import fsa

import naive


def _P(B, N, C, seed=0, sharp=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharp * torch.randn(B, N, C, generator=g), dim=-1)


@pytest.mark.parametrize("N,C", [(49, 3), (144, 21), (300, 46)])
def test_kl_affinity_product_form_equals_dense(N, C):
    P = _P(2, N, C)
    S = fsa.kl_affinity(P)
    for b in range(2):
        dense = 1.0 / (1.0 + naive.kl_dense(P[b]))
        torch.testing.assert_close(S[b], dense, rtol=0, atol=1e-6)


def test_kl_affinity_diagonal_is_one_and_clamped():
    P = _P(1, 64, 5)
    S = fsa.kl_affinity(P)[0]
    torch.testing.assert_close(S.diagonal(), torch.ones(64), rtol=0, atol=1e-6)
    assert (S <= 1 + 1e-6).all() and (S > 0).all()


@pytest.mark.parametrize("p", [0.45, 0.1, 0.9])
def test_nucleus_keep_matches_row_by_row(p):
    S = fsa.kl_affinity(_P(1, 120, 7, sharp=6.0))
    keep = fsa.nucleus_keep(S, p)[0]
    for i in range(120):
        expected = set(naive.prune_row(S[0, i], p))
        assert set(torch.nonzero(keep[i]).flatten().tolist()) == expected
    assert keep.diagonal().all()  # S_ii = 1 is each row's maximum, always kept


@pytest.mark.parametrize("lam", [3.0, 2.3, 4.5])
def test_feedback_attention_from_identical_affinity(lam):
    S = fsa.kl_affinity(_P(2, 100, 9, sharp=5.0))
    A_fb = fsa.attention_from_affinity(S, lam)
    for b in range(2):
        expected = naive.feedback_attention(None, lam, S=S[b])
        torch.testing.assert_close(A_fb[b], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(A_fb.sum(-1), torch.ones(2, 100), rtol=0, atol=1e-6)


@pytest.mark.parametrize("lam,row_chunk", [(3.0, 256), (4.5, 256), (3.0, 7)])
def test_feedback_attention_from_P_matches_dense_kl(lam, row_chunk):
    """From P the two KL forms differ by fp32 rounding (~1e-7); S·exp(λS) then a softmax
    amplify that by up to ~(1+λ)e^λ, so the bound is 1e-5 while the kept sets must agree.
    Rows computed in chunks (7 does not divide 100) give the same matrix."""
    P = _P(2, 100, 9, sharp=5.0)
    A_fb = fsa.feedback_attention(P, lam, row_chunk=row_chunk)
    for b in range(2):
        expected = naive.feedback_attention(P[b], lam)
        assert torch.equal(A_fb[b] > 0, expected > 0)
        torch.testing.assert_close(A_fb[b], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shared", [True, False])
def test_ensemble_applied_to_v_equals_dense_per_head(shared):
    g = torch.Generator().manual_seed(1)
    B, h, N, d = 2, 4, 80, 16
    A = torch.softmax(torch.randn(B, 1 if shared else h, N, N, generator=g), -1)
    A_fb = torch.softmax(torch.randn(B, N, N, generator=g) * 3, -1)
    v = torch.randn(B, h, N, d, generator=g)
    out = fsa.ensemble_apply(A, A_fb, v)
    for b in range(B):
        for head in range(h):
            Ah = A[b, 0 if shared else head]
            dense = naive.ensemble(Ah, A_fb[b]) @ v[b, head]
            torch.testing.assert_close(out[b, head], dense, rtol=0, atol=1e-6)
    # rows of A' sum to 1 when A's do
    A_prime = fsa.ensemble_matrix(A, A_fb)
    torch.testing.assert_close(A_prime.sum(-1), torch.ones_like(A_prime.sum(-1)), rtol=0, atol=1e-6)


def test_identity_host_collapses_to_feedback():
    g = torch.Generator().manual_seed(2)
    A_fb = torch.softmax(torch.randn(1, 30, 30, generator=g), -1)
    v = torch.randn(1, 2, 30, 8, generator=g)
    torch.testing.assert_close(fsa.ensemble_apply(None, A_fb, v), A_fb[:, None] @ v)
    eye = torch.eye(30)[None, None]
    torch.testing.assert_close(
        fsa.ensemble_apply(eye, A_fb, v), A_fb[:, None] @ v, rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_peaked_P_gives_finite_feedback_in_every_precision(dtype):
    """Real weights give peaked P (entries far below 1e-8, 0 in fp16): A_fb must stay finite
    and equal the naive fp64 form computed from the same P."""
    P = _P(1, 144, 21, seed=4, sharp=40.0)
    assert (P < 1e-8).float().mean() > 0.5  # most entries are tiny
    P_low = P.to(dtype)
    A_fb = fsa.feedback_attention(P_low, 3.0)
    assert A_fb.dtype == torch.float32 and torch.isfinite(A_fb).all()
    torch.testing.assert_close(A_fb.sum(-1), torch.ones(1, 144), rtol=0, atol=1e-5)
    S = fsa.kl_affinity(P_low)
    assert torch.isfinite(S).all()
    exact = 1.0 / (1.0 + naive.kl_dense(P_low[0].double()))
    torch.testing.assert_close(S[0].double(), exact, rtol=0, atol=1e-5)
    expected = naive.feedback_attention(P_low[0].double(), 3.0, S=exact.float())
    # Peaked P makes many patches' rows identical, so S has ties that the cut may break either
    # way (as in the reference): compare each row's sorted weights.
    ours = torch.sort(A_fb[0], dim=-1).values
    theirs = torch.sort(expected, dim=-1).values
    close = ((ours - theirs).abs().amax(dim=-1) <= 1e-4).float().mean()
    assert close >= 0.99


@pytest.mark.parametrize(
    ("device", "batch", "n", "rows"),
    [
        ("cpu", 8, 1764, 2**22 // (8 * 1764)),  # eight DINO B/8 windows: six chunks
        ("cuda", 8, 1764, 2**24 // (8 * 1764)),  # beside a GPU: two chunks
        ("cuda", 1, 441, 441),  # a whole small grid in one pass
        ("cuda", 3, 4096, 2**24 // (3 * 4096)),  # a SAM proxy's three windows
        ("meta", 8, 1764, 2**22 // (8 * 1764)),  # other devices: the CPU's budget
        ("cpu", 64, 4096, 64),  # never fewer than MIN_ROWS
    ],
)
def test_rows_per_chunk_follow_the_device_budget(device, batch, n, rows):
    assert fsa.rows_per_chunk(batch, n, torch.device(device)) == rows
    assert fsa.rows_per_chunk(batch, n) == fsa.rows_per_chunk(batch, n, torch.device("cpu"))


def test_feedback_attention_chunks_by_its_device(monkeypatch):
    """The chunk size comes from P's device: a smaller budget for that device makes more,
    smaller chunks, and the matrix is the same."""
    P = _P(2, 100, 9, sharp=5.0)
    whole = fsa.feedback_attention(P, 3.0)
    chunks = []
    real = fsa.attention_from_affinity

    def spy(S, lam, p=fsa.NUCLEUS_P):
        chunks.append(S.shape[1])
        return real(S, lam, p)

    monkeypatch.setattr(fsa, "attention_from_affinity", spy)
    monkeypatch.setitem(fsa.CHUNK_ELEMENTS, "cpu", 2 * 100 * 70)  # 70 rows at a time
    torch.testing.assert_close(fsa.feedback_attention(P, 3.0), whole, rtol=0, atol=1e-6)
    assert chunks == [70, 30]
