"""megarl's CPU core attention over packed THD rows: each segment of the cumulative lengths
attends only within itself, causally, exactly as that segment alone (GQA, sliding window,
forward and gradients), and lengths that do not cover the row are refused."""

import pytest
import torch


def _attention(window=None):
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.enums import AttnMaskType

    from megarl.models.attention import SDPAttention
    from megarl.runtime.distributed import init_runtime

    init_runtime(1, 1)
    extra = {"window_size": window} if window else {}
    cfg = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4, num_query_groups=2, kv_channels=8,
                            attention_dropout=0.0, hidden_dropout=0.0, masked_softmax_fusion=False,
                            use_cpu_initialization=True, **extra)
    return SDPAttention(cfg, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")


@pytest.mark.parametrize("window", [None, (3, 0)])
def test_thd_segments_attend_as_if_alone(window):
    from megarl.train.batch import packed_seq_params

    attn = _attention(window)
    g = torch.Generator().manual_seed(0)
    lengths = [5, 1, 7, 3, 4, 4]  # sequences, then two padding segments
    t = sum(lengths)
    q = torch.randn(t, 4, 8, generator=g, requires_grad=True)
    k = torch.randn(t, 2, 8, generator=g, requires_grad=True)
    v = torch.randn(t, 2, 8, generator=g, requires_grad=True)
    upstream = torch.randn(t, 32, generator=g)
    out = attn(q, k, v, None, packed_seq_params=packed_seq_params(lengths, torch.device("cpu")))
    assert out.shape == (t, 32)
    (out * upstream).sum().backward()
    packed_grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    start, alone = 0, []
    for n in lengths:  # each segment alone, through the unpacked [s, b=1] path
        piece = slice(start, start + n)
        o = attn(q[piece].unsqueeze(1), k[piece].unsqueeze(1), v[piece].unsqueeze(1), None)[:, 0]
        (o * upstream[piece]).sum().backward()
        alone.append(o.detach())
        start += n
    torch.testing.assert_close(out.detach(), torch.cat(alone), atol=1e-6, rtol=1e-5)
    for a, b in zip(packed_grads, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_thd_lengths_must_cover_the_row():
    from megatron.core.packed_seq_params import PackedSeqParams

    attn = _attention()
    q, kv = torch.randn(24, 4, 8), torch.randn(24, 2, 8)
    cu = torch.tensor([0, 11, 18], dtype=torch.int32)
    short = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=11, max_seqlen_kv=11)
    with pytest.raises(ValueError, match="cumulative lengths run from 0 to 18 but the packed row has 24 tokens"):
        attn(q, kv, kv, None, packed_seq_params=short)
