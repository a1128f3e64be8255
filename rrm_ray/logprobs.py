"""Log-probs and entropy without [B, T, V] fp32 tensors: custom autograd kernels, pure torch.

`gather_logprobs` / `entropy_from_logits` work on logits that exist anyway, chunk by chunk;
`head_logprobs` starts from the final hidden states and the output projection (the learner's path,
`actors.model_io.install_logprob_forward`). Shapes as in `rrm_ray.algo`: B sequences, T tokens,
V vocabulary, H hidden size.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import Tensor

from rrm_ray.algo import AlgoInputError, check_input

# ----------------------------------------------------------------------------------------------
# chunked log-probs and entropy
#
# Both are custom autograd functions: a plain chunked loop would still keep every chunk's fp32
# softmax alive for backward, i.e. the whole [B*T, V] again. Here forward saves only the logits (which
# exist anyway) plus one number per row, and backward recomputes the softmax one chunk at a time.


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # bf16/fp16 -> fp32, fp64 stays fp64


def _row_blocks(logits: Tensor, chunk_size: int) -> Iterator[tuple[Tensor, int, int]]:
    """Yield (rows [n, V], start, end): views of at most chunk_size rows of logits [..., V], in
    row-major order, so rows are flat rows start..end-1 of the [B*T, V] matrix.

    logits[:, :-1] (the usual shift) cannot be flattened without a full copy, so such tensors are
    walked one leading index at a time instead.
    """
    vocab = logits.shape[-1]
    try:
        flat = logits.view(-1, vocab)
    except RuntimeError:
        lead = logits.shape[:-1]
        inner = lead[-1]
        for i, idx in enumerate(itertools.product(*(range(n) for n in lead[:-1]))):
            per_seq = logits[idx]  # [T, V], a view
            for s in range(0, inner, chunk_size):
                yield per_seq[s : s + chunk_size], i * inner + s, i * inner + min(s + chunk_size, inner)
        return
    for s in range(0, flat.shape[0], chunk_size):
        yield flat[s : s + chunk_size], s, min(s + chunk_size, flat.shape[0])


class _ChunkedLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, tokens: Tensor, chunk_size: int) -> Tensor:  # [..., V], [R] -> [R]
        cdt = _compute_dtype(logits.dtype)
        out = torch.empty(tokens.shape[0], dtype=cdt, device=logits.device)
        lse = torch.empty_like(out)
        for rows, s, e in _row_blocks(logits, chunk_size):
            rows = rows.to(cdt)
            lse[s:e] = torch.logsumexp(rows, dim=-1)
            out[s:e] = rows.gather(-1, tokens[s:e, None]).squeeze(-1) - lse[s:e]
        ctx.save_for_backward(logits, tokens, lse)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, tokens, lse = ctx.saved_tensors
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        grad_flat = grad.view(-1, logits.shape[-1])
        for rows, s, e in _row_blocks(logits, ctx.chunk_size):
            # d logp(tok) / d logits = onehot(tok) - softmax(logits)
            g = grad_out[s:e, None].to(lse.dtype)
            d = -torch.exp(rows.to(lse.dtype) - lse[s:e, None]) * g
            d.scatter_add_(-1, tokens[s:e, None], g)
            grad_flat[s:e] = d
        return grad, None, None


class _ChunkedEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, chunk_size: int) -> Tensor:  # [..., V] -> [R]
        cdt = _compute_dtype(logits.dtype)
        out = torch.empty(logits.shape[:-1].numel(), dtype=cdt, device=logits.device)
        lse = torch.empty_like(out)
        for rows, s, e in _row_blocks(logits, chunk_size):
            rows = rows.to(cdt)
            lse[s:e] = torch.logsumexp(rows, dim=-1)
            p = torch.exp(rows - lse[s:e, None])
            out[s:e] = lse[s:e] - (p * rows).sum(-1)  # H = lse - E_p[x]
        ctx.save_for_backward(logits, lse)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, lse = ctx.saved_tensors
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        grad_flat = grad.view(-1, logits.shape[-1])
        for rows, s, e in _row_blocks(logits, ctx.chunk_size):
            # dH / dx_j = -p_j (x_j - E_p[x])
            rows = rows.to(lse.dtype)
            p = torch.exp(rows - lse[s:e, None])
            mean_x = (p * rows).sum(-1, keepdim=True)
            grad_flat[s:e] = -p * (rows - mean_x) * grad_out[s:e, None]
        return grad, None


def _check_logits(fn: str, logits: Tensor, chunk_size: int) -> None:
    check_input(
        logits.dim() >= 2, f"{fn}: logits must be [B, T, V] (or [R, V]), got shape {tuple(logits.shape)}"
    )
    check_input(logits.is_floating_point(), f"{fn}: logits must be floating point, got {logits.dtype}")
    check_input(chunk_size >= 1, f"{fn}: chunk_size must be >= 1, got {chunk_size}")


def gather_logprobs(logits: Tensor, tokens: Tensor, chunk_size: int = 1024) -> Tensor:
    """Log-probability of `tokens` under `logits`. logits: [B, T, V], tokens: [B, T] -> [B, T].

    Works on the flattened B*T rows `chunk_size` at a time (logsumexp per chunk), so with a 49k vocab
    the full [B, T, V] log-softmax never exists, in forward or in backward. Computed in fp32 (fp64 stays
    fp64) and returned in that dtype; the gradient w.r.t. logits comes back in the logits' dtype.
    `logits[b, t]` must already be the prediction for `tokens[b, t]` (shift before calling).
    """
    fn = "gather_logprobs"
    _check_logits(fn, logits, chunk_size)
    check_input(
        tokens.shape == logits.shape[:-1],
        f"{fn}: tokens has shape {tuple(tokens.shape)}, expected {tuple(logits.shape[:-1])} (logits minus V)",
    )
    check_input(not tokens.is_floating_point(), f"{fn}: tokens must be integer ids, got {tokens.dtype}")
    vocab = logits.shape[-1]
    bad = ((tokens < 0) | (tokens >= vocab)).nonzero()
    if bad.numel():
        pos = tuple(bad[0].tolist())
        raise AlgoInputError(
            f"{fn}: tokens{list(pos)} = {tokens[pos].item()} is outside the vocabulary [0, {vocab})"
        )
    flat = _ChunkedLogprob.apply(logits, tokens.reshape(-1).long(), chunk_size)
    return flat.view(tokens.shape)


def entropy_from_logits(logits: Tensor, chunk_size: int = 1024) -> Tensor:
    """Entropy of the softmax per position. logits: [B, T, V] -> [B, T]; chunked like `gather_logprobs`."""
    _check_logits("entropy_from_logits", logits, chunk_size)
    return _ChunkedEntropy.apply(logits, chunk_size).view(logits.shape[:-1])


# ----------------------------------------------------------------------------------------------
# log-probs straight from the final hidden states (the learner's path)
#
# `gather_logprobs` needs the logits [B, T, V] to exist, and at 4k tokens and a 150k vocabulary the
# model's own logits, their fp32 upcast and their gradients are several GB. `head_logprobs` starts one
# step earlier, from the hidden states [B, T, H] and the output projection, as a single autograd
# function: forward projects `chunk` rows at a time and keeps only the hidden states (H << V) plus two
# numbers per row; backward recomputes each chunk's logits and turns them into that chunk's gradient in
# place. No [B, T, V] tensor ever exists, and at most two [chunk, V] fp32 blocks at a time.


@torch.no_grad()
def _scaled_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    """[n, H] -> [n, V]: the projection in the inputs' dtype (as the model's lm_head), then fp32 / T."""
    x = torch.nn.functional.linear(hidden, weight, bias)
    x = x.to(_compute_dtype(x.dtype))
    return x.div_(temperature) if temperature != 1.0 else x


class _HeadLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, temperature, chunk, with_entropy):
        # hidden [R, H], weight [V, H], bias [V] or None, tokens [R] -> log-probs [R], entropy [R] or None
        cdt = _compute_dtype(hidden.dtype)
        rows = tokens.shape[0]
        logprobs = torch.empty(rows, dtype=cdt, device=hidden.device)
        lse = torch.empty_like(logprobs)
        mean_x = torch.empty_like(logprobs) if with_entropy else None  # E_p[x], for the entropy
        with torch.no_grad():
            for s in range(0, rows, chunk):
                e = min(s + chunk, rows)
                x = _scaled_logits(hidden[s:e], weight, bias, temperature)
                lse[s:e] = torch.logsumexp(x, dim=-1)
                logprobs[s:e] = x.gather(-1, tokens[s:e, None]).squeeze(-1) - lse[s:e]
                if with_entropy:
                    p = (x - lse[s:e, None]).exp_()
                    mean_x[s:e] = p.mul_(x).sum(-1)
                del x
        ctx.save_for_backward(hidden, weight, bias, tokens, lse, mean_x)
        ctx.temperature, ctx.chunk = temperature, chunk
        if not with_entropy:
            return logprobs, None
        return logprobs, lse - mean_x  # H = lse - E_p[x]

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        hidden, weight, bias, tokens, lse, mean_x = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b and bias is not None else None
        g_lp = torch.zeros_like(lse) if g_lp is None else g_lp.to(lse.dtype)
        for s in range(0, tokens.shape[0], ctx.chunk):
            e = min(s + ctx.chunk, tokens.shape[0])
            with torch.no_grad():
                x = _scaled_logits(hidden[s:e], weight, bias, ctx.temperature)  # [n, V] fp32
                g = g_lp[s:e, None]
                if g_ent is None:  # d logp(tok) / dx = onehot(tok) - p
                    d = x.sub_(lse[s:e, None]).exp_().mul_(-g)
                else:  # ... plus g_ent * dH/dx = g_ent * -p (x - E_p[x])
                    d = (x - lse[s:e, None]).exp_()
                    t = x.sub_(mean_x[s:e, None]).mul_(g_ent[s:e, None].to(x.dtype)).add_(g)
                    d.mul_(t).neg_()
                    del t
                del x
                d.scatter_add_(-1, tokens[s:e, None], g)
                if ctx.temperature != 1.0:
                    d.div_(ctx.temperature)
                d = d.to(hidden.dtype)  # the projection's backward in its own dtype, as autograd would
                if need_h:
                    grad_h[s:e] = d @ weight
                if need_w:
                    grad_w.addmm_(d.t(), hidden[s:e])
                if grad_b is not None:
                    grad_b += d.sum(0)
                del d
        return grad_h, grad_w, grad_b, None, None, None, None


def head_logprobs(
    hidden: Tensor,
    weight: Tensor,
    tokens: Tensor,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    bias: Tensor | None = None,
    with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of `tokens` (and the entropy) under softmax((hidden @ weight.T + bias) / temperature).

    hidden: [B, T, H], the final (normed) hidden states, already shifted so hidden[b, t] predicts
    tokens[b, t]; weight: [V, H], the output projection (lm_head); tokens: [B, T] -> ([B, T], [B, T] or
    None), in fp32 (fp64 stays fp64). The projection runs in the inputs' dtype (bf16 under mixed
    precision, as the model's own lm_head would), the softmax in fp32, `chunk_tokens` rows at a time
    (see the section comment). Gradients flow to hidden, weight and bias; the entropy is detached
    unless `entropy_grad`.
    """
    fn = "head_logprobs"
    check_input(hidden.dim() == 3, f"{fn}: hidden must be [B, T, H], got shape {tuple(hidden.shape)}")
    check_input(
        weight.dim() == 2 and weight.shape[1] == hidden.shape[-1],
        f"{fn}: weight must be [V, H={hidden.shape[-1]}], got shape {tuple(weight.shape)}",
    )
    check_input(
        tokens.shape == hidden.shape[:-1],
        f"{fn}: tokens has shape {tuple(tokens.shape)}, expected {tuple(hidden.shape[:-1])} (hidden minus H)",
    )
    check_input(not tokens.is_floating_point(), f"{fn}: tokens must be integer ids, got {tokens.dtype}")
    check_input(chunk_tokens >= 1, f"{fn}: chunk_tokens must be >= 1, got {chunk_tokens}")
    check_input(temperature > 0, f"{fn}: temperature must be > 0, got {temperature}")
    vocab = weight.shape[0]
    if tokens.numel():
        lo, hi = int(tokens.min()), int(tokens.max())
        check_input(
            lo >= 0 and hi < vocab, f"{fn}: token ids span [{lo}, {hi}], outside the vocabulary [0, {vocab})"
        )
    rows = hidden.reshape(-1, hidden.shape[-1])  # [B*T, H]: a copy of the (small) hidden states at most
    ids = tokens.reshape(-1).long()
    lp, ent = _HeadLogprob.apply(rows, weight, bias, ids, float(temperature), chunk_tokens, with_entropy)
    lp = lp.view(tokens.shape)
    if not with_entropy:
        return lp, None
    return lp, (ent if entropy_grad else ent.detach()).view(tokens.shape)
