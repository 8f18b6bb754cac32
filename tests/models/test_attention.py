"""megarl's CPU core attention (torch SDPA) against Megatron's DotProductAttention and plain torch:
block-diagonal packed masks, GQA, sliding windows, forward and gradients."""

import pytest
import torch


def _config(window=None, heads=4, groups=2):
    from megatron.core.transformer import TransformerConfig

    extra = {"window_size": window} if window else {}
    return TransformerConfig(num_layers=1, hidden_size=heads * 8, num_attention_heads=heads, num_query_groups=groups,
                             kv_channels=8, attention_dropout=0.0, hidden_dropout=0.0, masked_softmax_fusion=False,
                             use_cpu_initialization=True, **extra)


def _packed_mask(b, s, lengths, generator):
    """True = masked out: rows packed with sequences of the given lengths, the rest padding."""
    seg = torch.full((b, s), -1, dtype=torch.long)
    for r in range(b):
        start = 0
        for i, n in enumerate(lengths[r]):
            seg[r, start:start + n] = i
            start += n
        seg[r, start:] = -torch.arange(1, s - start + 1) - 1000  # padding: each position alone
    allowed = (seg[:, :, None] == seg[:, None, :]) & torch.ones(s, s, dtype=torch.bool).tril()
    return ~allowed.unsqueeze(1)


def _reference(q, k, v, mask, window=None):
    """Plain torch: [s, b, n, hn] inputs, True = masked out."""
    s, b, heads, hn = q.shape
    reps = heads // k.shape[2]
    k, v = k.repeat_interleave(reps, dim=2), v.repeat_interleave(reps, dim=2)
    scores = torch.einsum("ibnh,jbnh->bnij", q, k) / hn**0.5
    masked = mask.clone()
    if window is not None:
        i, j = torch.arange(s).unsqueeze(1), torch.arange(s).unsqueeze(0)
        masked = masked | ~((j >= i - window[0]) & (j <= i + window[1]))
    probs = scores.masked_fill(masked, float("-inf")).softmax(-1)
    return torch.einsum("bnij,jbnh->ibnh", probs, v).reshape(s, b, heads * hn)


@pytest.mark.parametrize("window", [None, (3, 0)])
def test_sdpa_attention_matches_megatron_and_plain_torch(window):
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from megarl.models.attention import SDPAttention
    from megarl.runtime.distributed import init_runtime

    init_runtime(1, 1)
    g = torch.Generator().manual_seed(0)
    s, b = 16, 3
    cfg = _config(window)
    ours = SDPAttention(cfg, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    mask = _packed_mask(b, s, [[5, 7], [16], [3, 4, 2]], g)
    q = torch.randn(s, b, 4, 8, generator=g, requires_grad=True)
    k = torch.randn(s, b, 2, 8, generator=g, requires_grad=True)
    v = torch.randn(s, b, 2, 8, generator=g, requires_grad=True)
    upstream = torch.randn(s, b, 32, generator=g)

    def run(fn):
        for t in (q, k, v):
            t.grad = None
        out = fn(q, k, v)
        (out * upstream).sum().backward()
        return out.detach(), [t.grad.clone() for t in (q, k, v)]

    out, grads = run(lambda q, k, v: ours(q, k, v, mask))
    ref_out, ref_grads = run(lambda q, k, v: _reference(q, k, v, mask, window))
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)
    if window is None:  # Megatron's own local attention (it drops a given mask under a window)
        megatron = DotProductAttention(cfg, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
        m_out, m_grads = run(lambda q, k, v: megatron(q, k, v, mask))
        torch.testing.assert_close(out, m_out, atol=1e-5, rtol=1e-5)
        for a, r in zip(grads, m_grads):
            torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)
    # No mask: causal, like Megatron's causal mask type.
    plain, _ = run(lambda q, k, v: ours(q, k, v, None))
    causal = ~torch.ones(s, s, dtype=torch.bool).tril()
    torch.testing.assert_close(plain, _reference(q, k, v, causal, window).detach(), atol=1e-5, rtol=1e-5)
