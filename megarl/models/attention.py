"""Core attention for Megatron's local layers (the CPU path) through torch's fused
`scaled_dot_product_attention`, over packed THD rows or padded [s, b] batches.

Megatron's local `DotProductAttention` materializes the scores [b, heads, s, s] and runs baddbmm,
masked_fill, softmax and bmm as separate ops (forward and backward), and refuses packed
sequences. This module does the same arithmetic with torch's fused kernel (2-3.5x faster on CPU,
forward and backward; docs/benchmarks.md, trainer throughput section). GPUs use Transformer
Engine's attention instead and never reach it.

Packed rows (`packed_seq_params`, THD, what megarl's trainer always sends): query [t, heads, hn],
key/value [t, groups, hn], output [t, heads * hn]. The segments come from the cumulative lengths
(`cu_seqlens_*_padded` when set, else `cu_seqlens_*`, as in Megatron's RoPE), which must cover all
t tokens: every segment is gathered into one [segments, longest, ...] batch, attends causally
within itself, and is scattered back, so the cost is segments x longest^2, not t^2.
Unpacked batches: query [sq, b, heads, hn], key/value [sk, b, groups, hn], `attention_mask`
True = masked out (Megatron's convention), output [sq, b, heads * hn].
Sliding-window layers intersect the window with the mask (Megatron's local softmax replaces a
given mask by the window, which would let packed sequences see each other). Softmax offsets and
attention bias go to Megatron's own implementation (which has no THD support).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


class SDPAttention(DotProductAttention):
    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if attention_bias is not None or self.softmax_offset is not None:
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias, packed_seq_params)
        if packed_seq_params is not None:
            return self._packed_forward(query, key, value, packed_seq_params, attn_mask_type)
        sq, b = query.shape[0], query.shape[1]
        sk = key.shape[0]
        # [s, b, n, hn] -> [b, n, s, hn]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        k, v = self._expand_groups(k), self._expand_groups(v)
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
        context = self._attend(q, k, v, allowed, is_causal)
        # [b, n, sq, hn] -> [sq, b, n * hn]
        return context.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)

    def _packed_forward(self, query, key, value, packed, attn_mask_type):
        """THD: query [t, heads, hn], key/value [t, groups, hn] -> [t, heads * hn]."""
        if packed.qkv_format != "thd":
            raise ValueError(f"packed_seq_params.qkv_format={packed.qkv_format!r}; megarl packs rows as 'thd'")
        cu = packed.cu_seqlens_q_padded if packed.cu_seqlens_q_padded is not None else packed.cu_seqlens_q
        cu_kv = packed.cu_seqlens_kv_padded if packed.cu_seqlens_kv_padded is not None else packed.cu_seqlens_kv
        if cu_kv is not cu and not torch.equal(cu_kv, cu):
            raise ValueError("packed self-attention needs equal query and key/value cumulative lengths")
        t = query.shape[0]
        if int(cu[-1]) != t or int(cu[0]) != 0:
            raise ValueError(
                f"cumulative lengths run from {int(cu[0])} to {int(cu[-1])} but the packed row has {t} tokens; "
                "they must cover every token (padding as segments of its own; see megarl.train.batch)"
            )
        starts, lengths = cu[:-1].long(), (cu[1:] - cu[:-1]).long()
        longest = int(packed.max_seqlen_q) if packed.max_seqlen_q else int(lengths.max())
        offsets = torch.arange(longest, device=query.device)
        inside = offsets.unsqueeze(0) < lengths.unsqueeze(1)  # [segments, longest]
        index = (starts.unsqueeze(1) + offsets.unsqueeze(0)).clamp_(max=t - 1)
        # [t, n, hn] -> [segments, n, longest, hn]; positions past a segment's end repeat a real
        # token: only later positions of their own (dropped) rows attend to them under causality.
        q, k, v = (x[index].permute(0, 2, 1, 3) for x in (query, key, value))
        k, v = self._expand_groups(k), self._expand_groups(v)
        causal = (attn_mask_type or self.attn_mask_type) in (AttnMaskType.causal, AttnMaskType.padding_causal)
        window = self.scale_mask_softmax.window_size
        allowed, is_causal = None, causal and longest > 1 and window is None
        if window is not None:
            i, j = offsets.unsqueeze(1), offsets.unsqueeze(0)
            allowed = (j >= i - window[0]) & (j <= i + window[1])
            if causal:
                allowed = allowed & (j <= i)
        if not causal:  # keys past a segment's end are padding
            key_inside = inside[:, None, None, :]
            allowed = key_inside if allowed is None else allowed & key_inside
        context = self._attend(q, k, v, allowed, is_causal)
        # [segments, n, longest, hn] -> the t real positions, in order -> [t, n * hn]
        context = context.permute(0, 2, 1, 3)[inside]
        return context.reshape(t, self.hidden_size_per_partition)

    def _expand_groups(self, x):
        """[.., groups, s, hn] -> [.., heads, s, hn] (grouped-query attention)."""
        groups = self.num_attention_heads_per_partition // self.num_query_groups_per_partition
        return x.repeat_interleave(groups, dim=1) if groups > 1 else x

    def _attend(self, q, k, v, allowed, is_causal):
        scale = self.softmax_scale * (self.scale_mask_softmax.scale or 1.0)
        dropout = self.attention_dropout.p if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout, is_causal=is_causal,
                                              scale=scale)
