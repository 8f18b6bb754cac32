"""Core attention for Megatron's local layers (the CPU path) through torch's fused
`scaled_dot_product_attention`.

Megatron's local `DotProductAttention` materializes the scores [b, heads, s, s] and runs baddbmm,
masked_fill, softmax and bmm as separate ops (forward and backward). On CPU, where packed
micro-batches are rows of a few hundred tokens with a block-diagonal mask, that is most of an
update step; torch's fused kernel does the same arithmetic 2-3.5x faster, forward and backward
(measured in isolation; docs/benchmarks.md, trainer throughput section). GPUs use Transformer
Engine's attention instead and never reach this module.

Same inputs and outputs as `DotProductAttention`: query [sq, b, heads, hn], key/value
[sk, b, groups, hn], `attention_mask` True = masked out (Megatron's convention), output
[sq, b, heads * hn]. Sliding-window layers intersect the window with the given mask (Megatron's
local softmax replaces a given mask by the window, which would let packed sequences see each
other). Anything this module does not cover (softmax offsets, attention bias, THD packing) goes
to Megatron's own implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


class SDPAttention(DotProductAttention):
    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None or self.softmax_offset is not None:
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias, packed_seq_params)
        sq, b = query.shape[0], query.shape[1]
        sk = key.shape[0]
        # [s, b, n, hn] -> [b, n, s, hn]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        groups = self.num_attention_heads_per_partition // self.num_query_groups_per_partition
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        allowed = None if attention_mask is None else ~attention_mask
        window = self.scale_mask_softmax.window_size
        is_causal = False
        if window is not None:
            i = torch.arange(sq, device=q.device).unsqueeze(1) + (sk - sq)
            j = torch.arange(sk, device=q.device).unsqueeze(0)
            in_window = (j >= i - window[0]) & (j <= i + window[1])
            allowed = in_window if allowed is None else allowed & in_window
        elif allowed is None and self.attn_mask_type == AttnMaskType.causal and sq > 1:
            is_causal = True
        scale = self.softmax_scale * (self.scale_mask_softmax.scale or 1.0)
        dropout = self.attention_dropout.p if self.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout, is_causal=is_causal,
                                                 scale=scale)
        # [b, n, sq, hn] -> [sq, b, n * hn]
        return context.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)
