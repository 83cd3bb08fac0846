"""Deliberately naive re-implementations of the method (docs/hosts.md, docs/method.md), for the tests only.

Explicit loops over heads, rows and windows; the N×N×C KL; nothing shared with fbseg.
Shapes are per crop (no batch) unless said otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------- CLIP tower up to the last block
def pos_table(pos: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(1+n0², D) → (1+rows·cols, D), DINO's "+0.1" bicubic scale-factor form."""
    n0 = int(round(math.sqrt(pos.shape[0] - 1)))
    if (rows, cols) == (n0, n0):
        return pos
    grid = pos[1:].reshape(n0, n0, -1).permute(2, 0, 1)[None]
    grid = F.interpolate(grid, scale_factor=((rows + 0.1) / n0, (cols + 0.1) / n0), mode="bicubic")
    assert grid.shape[-2:] == (rows, cols)
    return torch.cat([pos[:1], grid[0].permute(1, 2, 0).reshape(rows * cols, -1)])


def last_block_input(visual, crop: torch.Tensor):
    """crop (3, H, W) normalised → x (1+N, D), (rows, cols)."""
    p = visual.conv1.kernel_size[0]
    rows, cols = crop.shape[1] // p, crop.shape[2] // p
    patches = []
    for r in range(rows):
        for c in range(cols):
            piece = crop[:, r * p : (r + 1) * p, c * p : (c + 1) * p]
            patches.append((visual.conv1.weight * piece).sum(dim=(1, 2, 3)))
    x = torch.stack([visual.class_embedding] + patches)
    x = x + pos_table(visual.positional_embedding, rows, cols)
    x = visual.ln_pre(x)[None]
    for blk in visual.transformer.resblocks[:-1]:
        x = blk(x)  # open_clip's own block
    return x[0], (rows, cols)


# ---------------------------------------------------------------- the last block, per head
def qkv(block, x):
    """Per-head q, k, v lists of (L, d) from ln_1(x)."""
    D = x.shape[1]
    h = block.attn.num_heads
    d = D // h
    y = block.ln_1(x)
    W, b = block.attn.in_proj_weight, block.attn.in_proj_bias
    q = y @ W[:D].T + b[:D]
    k = y @ W[D : 2 * D].T + b[D : 2 * D]
    v = y @ W[2 * D :].T + b[2 * D :]
    return ([t[:, i * d : (i + 1) * d] for i in range(h)] for t in (q, k, v))


def softmax_rows(m: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(m)
    for i in range(m.shape[0]):
        row = m[i] - m[i].max()
        e = torch.exp(row)
        out[i] = e / e.sum()
    return out


def gaussian(rows, cols, sigma=5.0):
    N = rows * cols
    G = torch.zeros(N + 1, N + 1)
    for i in range(N):
        for j in range(N):
            ri, ci, rj, cj = i // cols, i % cols, j // cols, j % cols
            G[i + 1, j + 1] = math.exp(-((ri - rj) ** 2 + (ci - cj) ** 2) / (2 * sigma**2))
    return G


# Every host this file implements, by registry name; a host registered in fbseg but missing
# here fails the suite (tests/test_hosts.py).
HOSTS = ("maskclip", "sclip", "clearclip", "naclip", "proxyclip")
RESIDUAL_HOSTS = ("maskclip", "sclip")


def host_attention(host: str, block, x, grid):
    """Per-head full attentions over CLS + patches (list of (L, L)), or None for MaskCLIP."""
    q, k, _ = qkv(block, x)
    out = []
    for qh, kh in zip(q, k):
        s = qh.shape[1] ** -0.5
        if host == "maskclip":
            return None
        if host == "sclip":
            out.append(softmax_rows(s * qh @ qh.T) + softmax_rows(s * kh @ kh.T))
        elif host == "clearclip":
            out.append(softmax_rows(s * qh @ qh.T))
        elif host == "naclip":
            out.append(softmax_rows(s * kh @ kh.T + gaussian(*grid)))
        else:
            raise ValueError(host)
    return out


def finish(block, x_patch, mixed_heads, residual: bool):
    """out_proj of concatenated heads; residual hosts add x and run the FFN."""
    o = block.attn.out_proj(torch.cat(mixed_heads, dim=1))
    if not residual:
        return o
    u = x_patch + o
    return u + block.mlp(block.ln_2(u))


def host_tokens(host: str, block, x, grid):
    """The host's own last-block output for the patches (N, D)."""
    _, _, v = qkv(block, x)
    attn = host_attention(host, block, x, grid)
    residual = host in RESIDUAL_HOSTS
    mixed = [vh[1:] for vh in v] if attn is None else [A[1:] @ vh for A, vh in zip(attn, v)]
    return finish(block, x[1:], mixed, residual)


# ---------------------------------------------------------------- ProxyCLIP
def proxy_attention(feats: torch.Tensor, beta=1.2, gamma=3.0):
    """feats (C_f, M) → (M, M) with loops over rows."""
    f = feats / feats.norm(dim=0, keepdim=True)
    S = f.T @ f
    mu = S.sum() / S.numel()
    M = S.shape[0]
    A = torch.zeros(M, M)
    for i in range(M):
        row = gamma * (S[i] - beta * mu)
        keep = row >= 0
        keep[i] = True  # the diagonal, so a row is never empty
        vals = row[keep]
        w = torch.exp(vals - vals.max())
        A[i, keep] = w / w.sum()
    return A


def proxy_values(block, x, grid, proxy_grid):
    """Per-head patch values resized bilinearly to the proxy grid: list of (M, d)."""
    _, _, v = qkv(block, x)
    out = []
    for vh in v:
        img = vh[1:].reshape(grid[0], grid[1], -1).permute(2, 0, 1)[None]
        img = F.interpolate(img, size=proxy_grid, mode="bilinear", align_corners=False)
        out.append(img[0].permute(1, 2, 0).reshape(proxy_grid[0] * proxy_grid[1], -1))
    return out


# ---------------------------------------------------------------- FSA
def kl_dense(P: torch.Tensor) -> torch.Tensor:
    """The reference's N×N×C form: KL_ij = Σ_c P_ic (log P_ic − log P_jc), clamped at 0."""
    L = torch.log(P + 1e-10)
    kl = (P[:, None, :] * (L[:, None, :] - L[None, :, :])).sum(dim=2)
    return kl.clamp(min=0)


def prune_row(row: torch.Tensor, p=0.45):
    """Indices kept by the nucleus cut, by sorting one row in Python."""
    values = row.tolist()
    order = sorted(range(len(values)), key=lambda j: -values[j])
    vals = torch.tensor([values[j] for j in order], dtype=row.dtype)
    cum = torch.cumsum(torch.softmax(vals, dim=0), dim=0).tolist()
    return [j for pos, j in enumerate(order) if pos == 0 or cum[pos] <= p]


def feedback_attention(P: torch.Tensor, lam: float, p=0.45, S: torch.Tensor | None = None):
    """A_fb (N, N) from P (N, C); S given: start from that affinity instead."""
    if S is None:
        S = 1.0 / (1.0 + kl_dense(P))
    N = S.shape[0]
    A = torch.zeros(N, N)
    for i in range(N):
        kept = torch.tensor(prune_row(S[i], p))
        s_kept = S[i, kept]
        w = s_kept * torch.exp(lam * s_kept)
        w = torch.exp(w - w.max())
        A[i, kept] = w / w.sum()
    return A


def ensemble(A: torch.Tensor | None, A_fb: torch.Tensor) -> torch.Tensor:
    if A is None:
        return A_fb
    return (A_fb @ A + A @ A_fb + A_fb) / 3.0


def project(visual, tokens):
    return visual.ln_post(tokens) @ visual.proj


def cos_scores(visual, tokens, text, scale):
    f = project(visual, tokens)
    f = f / f.norm(dim=-1, keepdim=True)
    return scale * f @ text.T


def crop_state(host: str, visual, crop, text, lam: float, proxy_feats: torch.Tensor | None = None):
    """Every step of one crop by the spec: grid, per-head patch attentions (or None), values,
    CLS terms, the host tokens, P and A_fb."""
    x, grid = last_block_input(visual, crop)
    block = visual.transformer.resblocks[-1]
    residual = host in RESIDUAL_HOSTS
    _, _, v = qkv(block, x)
    full = None
    if host == "proxyclip":
        out_grid = tuple(proxy_feats.shape[-2:])
        A = proxy_attention(proxy_feats.flatten(1))
        vp = proxy_values(block, x, grid, out_grid)
        attn_heads = [A for _ in vp]
        cls_terms = [0.0 for _ in vp]
    else:
        out_grid = grid
        full = host_attention(host, block, x, grid)
        vp = [vh[1:] for vh in v]
        attn_heads = None if full is None else [a[1:, 1:] for a in full]
        cls_terms = (
            [0.0] * len(vp) if full is None else [a[1:, :1] @ vh[:1] for a, vh in zip(full, v)]
        )
    mixed = [
        vh if attn_heads is None else a @ vh + c
        for a, vh, c in zip(attn_heads or [None] * len(vp), vp, cls_terms)
    ]
    tokens = finish(block, x[1:], mixed, residual)
    s_host = cos_scores(visual, tokens, text, 20.0)
    mean_heads = [vh.mean(dim=0, keepdim=True).expand_as(vh) for vh in vp]
    uni = (
        finish(block, x[1:], mean_heads, residual)
        if residual
        else finish(block, None, [m[:1] for m in mean_heads], False)
    )
    s_uni = cos_scores(visual, uni, text, 35.0)
    P = torch.softmax(s_host - s_uni, dim=-1)
    return {
        "x": x,
        "block": block,
        "residual": residual,
        "grid": out_grid,
        "vp": vp,
        "attn_heads": attn_heads,
        "full": full,
        "tokens": tokens,
        "P": P,
        "A_fb": feedback_attention(P, lam),
    }


def crop_logits(
    host: str,
    visual,
    crop,
    text,
    feedback: bool,
    lam: float,
    proxy_feats: torch.Tensor | None = None,
):
    """Cosine logits (C, rows, cols) of one crop, by the spec, step by step."""
    st = crop_state(host, visual, crop, text, lam, proxy_feats)
    tokens = st["tokens"]
    if feedback:
        heads = st["attn_heads"] or [None] * len(st["vp"])
        mixed = [ensemble(a, st["A_fb"]) @ vh for a, vh in zip(heads, st["vp"])]
        tokens = finish(st["block"], st["x"][1:], mixed, st["residual"])
    f = project(visual, tokens)
    f = f / f.norm(dim=-1, keepdim=True)
    return (f @ text.T).T.reshape(text.shape[0], *st["grid"])


# ---------------------------------------------------------------- the reference's forward_slide
def slide_probs(
    logits_fn, img, window, stride, pad_to, out_size, scale, name_to_class, refine=None
):
    """img (3, H, W) normalised; logits_fn(crop (3, h, w)) → (C, rows, cols). ``refine``:
    a function (guide, logits) → logits applied at ``out_size`` (PAMR)."""
    preds = slide_logits(logits_fn, img, window, stride, pad_to, out_size)
    if refine is not None:
        guide = F.interpolate(img[None], size=out_size, mode="bilinear")[0]
        preds = refine(guide, preds)
    return probs_from_logits(preds, scale, name_to_class)


def slide_logits(logits_fn, img, window, stride, pad_to, out_size):
    """The reference's forward_slide: stitched logits resized to ``out_size``; window None
    runs the whole image unpadded (NACLIP's mode for VOC)."""
    if window is None:
        lg = logits_fn(img)
        lg = F.interpolate(lg[None], size=img.shape[1:], mode="bilinear")[0]
        return F.interpolate(lg[None], size=out_size, mode="bilinear")[0]
    _, H, W = img.shape
    preds, count = None, torch.zeros(H, W)
    h_grids = max(H - window + stride - 1, 0) // stride + 1
    w_grids = max(W - window + stride - 1, 0) // stride + 1
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * stride, wi * stride
            y2, x2 = min(y1 + window, H), min(x1 + window, W)
            y1, x1 = max(y2 - window, 0), max(x2 - window, 0)
            crop = img[:, y1:y2, x1:x2]
            h, w = crop.shape[1:]
            left = ((pad_to - w % pad_to) // 2) if w % pad_to else 0
            r = ((pad_to - w % pad_to) - left) if w % pad_to else 0
            t = ((pad_to - h % pad_to) // 2) if h % pad_to else 0
            b = ((pad_to - h % pad_to) - t) if h % pad_to else 0
            crop = F.pad(crop, (left, r, t, b))
            lg = logits_fn(crop)
            lg = F.interpolate(lg[None], size=crop.shape[1:], mode="bilinear")[0]
            lg = lg[:, t : t + h, left : left + w]
            if preds is None:
                preds = torch.zeros(lg.shape[0], H, W)
            preds[:, y1:y2, x1:x2] += lg
            count[y1:y2, x1:x2] += 1
    preds = preds / count
    return F.interpolate(preds[None], size=out_size, mode="bilinear")[0]


def probs_from_logits(preds, scale, name_to_class):
    """× scale, softmax over names, max over each class's names."""
    probs = torch.softmax(preds * scale, dim=0)
    K = max(name_to_class) + 1
    out = torch.stack(
        [
            torch.stack([probs[i] for i, c in enumerate(name_to_class) if c == k]).max(0)[0]
            for k in range(K)
        ]
    )
    return out


# ---------------------------------------------------------------- PAMR, pixel by neighbour
def pamr(image: torch.Tensor, logits: torch.Tensor, steps: int, dilations) -> torch.Tensor:
    """PAMR as SCLIP's and NACLIP's pamr.py compute it, written with clamped indices (the
    reference's replicate padding) and explicit loops over dilations and neighbours.
    image (K, H, W) guide, logits (C, H, W)."""
    image, logits = image.double(), logits.double()
    _, H, W = image.shape
    rows, cols = torch.arange(H), torch.arange(W)

    def at(x, dy, dx):  # x seen from the pixel (dy, dx) away, borders repeated
        return x[:, (rows + dy).clamp(0, H - 1)][:, :, (cols + dx).clamp(0, W - 1)]

    window, neighbours = [], []
    for d in dilations:
        for ky in (-1, 0, 1):
            for kx in (-1, 0, 1):
                window.append(at(image, ky * d, kx * d))
                if (ky, kx) != (0, 0):
                    neighbours.append((ky * d, kx * d))
    stack = torch.stack(window)  # (9·len(dilations), K, H, W)
    n = stack.shape[0]
    mean = stack.sum(0) / n
    sigma = (((stack - mean) ** 2).sum(0) / (n - 1)).sqrt()  # unbiased
    scores = []
    for dy, dx in neighbours:
        diff = (image - at(image, dy, dx)).abs() / (1e-8 + 0.1 * sigma)
        scores.append(-diff.mean(0))
    scores = torch.stack(scores)
    weights = torch.exp(scores - scores.max(0).values)
    weights = weights / weights.sum(0)
    for _ in range(steps):
        new = torch.zeros_like(logits)
        for (dy, dx), w in zip(neighbours, weights):
            new += w * at(logits, dy, dx)
        logits = new
    return logits.float()
