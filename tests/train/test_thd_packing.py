"""One packing format (issue 11, defect 2): micro-batches are THD rows with `PackedSeqParams`
whose cumulative lengths cover every token, and the CPU model runs Megatron's THD RoPE path
and megarl's SDPA core attention over them.

Before the fix the builder's cumulative lengths ended at the real token count of a padded row, so
Megatron 0.16.1's `_apply_rotary_pos_emb_thd` (`torch.split(t, seqlens)`) crashed with
"split_with_sizes expects split_sizes to sum exactly to ...", and the CPU path never passed
`packed_seq_params` at all (a separately built block mask instead), so no CPU test reached it.
"""

from unittest import mock

import pytest
import torch

from megarl.train.batch import TrainSequence, build_microbatches

CPU = torch.device("cpu")
ROPE_THD = "megatron.core.models.common.embeddings.rope_utils._apply_rotary_pos_emb_thd"


def _seqs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, (p, r) in enumerate(lengths):
        ids = torch.randint(1, 900, (p + r,), generator=g).tolist()
        out.append(TrainSequence(prompt_ids=ids[:p], response_ids=ids[p:], reward=float(i), group=i))
    return out


def _model(path, arch_seed=0):
    from megarl.models.build import build_model
    from megarl.models.hf_io import load_hf_into_model
    from megarl.models.spec import ModelSpec
    from megarl.runtime.distributed import init_runtime

    init_runtime(1, 1)
    spec = ModelSpec.from_hf(path)
    model = build_model(spec, dtype=torch.float32)
    load_hf_into_model(model, path)
    return model, spec


def test_cumulative_lengths_cover_every_token_of_each_row():
    seqs = _seqs([(5, 6), (3, 4), (7, 2), (20, 9), (2, 2)])
    mbs = build_microbatches(seqs, budget=32, device=CPU)
    assert len(mbs) > 1 and all(mb.input_ids.shape == mbs[0].input_ids.shape for mb in mbs)
    assert mbs[0].input_ids.shape[0] == 1  # THD: one packed row per micro-batch
    for mb in mbs:
        p = mb.packed_seq_params
        cu = p.cu_seqlens_q.tolist()
        lengths = [b - a for a, b in zip(cu, cu[1:])]
        assert p.qkv_format == "thd" and cu[0] == 0 and cu[-1] == mb.input_ids.shape[1]
        assert min(lengths) >= 1 and max(lengths) == p.max_seqlen_q
        # the sequences come first, in order, then padding segments no longer than the longest sequence
        real = [seqs[i].length for i in mb.seq_ids]
        assert lengths[: len(real)] == real and max(lengths[len(real):], default=0) <= max(real)
        assert mb.attention_mask is None  # attention comes from the segments alone


def test_megatron_thd_rope_splits_the_row_by_megarls_cumulative_lengths(tiny_hf_models):
    """The crash of defect 2, and its fix: Megatron's THD RoPE with cumulative lengths that stop at
    the real tokens of a padded row fails; with megarl's builder it runs (and is really reached)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    model, _ = _model(tiny_hf_models["qwen2"])
    model.eval()
    seqs = _seqs([(6, 5), (4, 3)])  # 18 tokens, padded to 24
    (mb,) = build_microbatches(seqs, budget=64, device=CPU)
    assert mb.input_ids.shape[1] == 24
    real = torch.tensor([0, 11, 18], dtype=torch.int32)  # the old format: ends at the real count
    old = PackedSeqParams(qkv_format="thd", cu_seqlens_q=real, cu_seqlens_kv=real, max_seqlen_q=11, max_seqlen_kv=11)
    with torch.no_grad(), pytest.raises(RuntimeError, match="split_with_sizes expects split_sizes to sum exactly to 24"):
        model(mb.input_ids, mb.position_ids, None, packed_seq_params=old)
    import megatron.core.models.common.embeddings.rope_utils as rope_utils

    with torch.no_grad(), mock.patch(ROPE_THD, wraps=rope_utils._apply_rotary_pos_emb_thd) as rope_thd:
        out = model(mb.input_ids, mb.position_ids, None, packed_seq_params=mb.packed_seq_params)
    assert rope_thd.call_count > 0 and out.shape[:2] == (1, 24) and torch.isfinite(out).all()


def test_packed_rows_equal_separate_sequences_logits_and_gradients(tiny_hf_models):
    """fp32, tight tolerance: each sequence's logits inside a packed THD row (with padding
    segments) equal its logits run alone, and so do the parameter gradients of a loss over both."""
    model, _ = _model(tiny_hf_models["qwen2"])
    model.train()
    seqs = _seqs([(5, 6), (3, 4), (7, 2), (9, 1)])
    mbs = build_microbatches(seqs, budget=32, device=CPU)  # 39 tokens: two micro-batches
    assert len(mbs) == 2
    g = torch.Generator().manual_seed(1)
    weights = {i: torch.randn(s.length, model.vocab_size, generator=g) for i, s in enumerate(seqs)}

    def grads():
        out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        return out

    model.zero_grad()
    packed_logits = {}
    for mb in mbs:
        logits = model(mb.input_ids, mb.position_ids, None, packed_seq_params=mb.packed_seq_params)[0]
        start, loss = 0, 0.0
        for i in mb.seq_ids:
            n = seqs[i].length
            packed_logits[i] = logits[start:start + n].detach()
            loss = loss + (logits[start:start + n] * weights[i]).sum()
            start += n
        loss.backward()
    packed_grads = grads()
    for i, s in enumerate(seqs):
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        logits = model(ids, torch.arange(s.length).unsqueeze(0), None)[0]
        torch.testing.assert_close(packed_logits[i], logits.detach(), atol=1e-5, rtol=1e-5)
        (logits * weights[i]).sum().backward()
    alone_grads = grads()
    assert packed_grads.keys() == alone_grads.keys() and len(packed_grads) > 10
    for name, want in alone_grads.items():  # summation order differs: 1e-6 of each tensor's scale
        torch.testing.assert_close(packed_grads[name], want, atol=1e-6 * float(want.abs().max()), rtol=1e-5)


def test_pipeline_logprobs_of_many_sequences_per_micro_batch_equal_each_alone(tiny_hf_models):
    """Many short sequences per micro-batch (what the CPU demo packs) through Megatron's schedule
    and the fused log-prob kernel: each sequence's log-probs equal a run on it alone; a sliding-
    window model (mistral) too."""
    from megarl.models.pipeline import run_pipeline
    from megarl.train.workers import response_logprobs

    for arch in ("qwen2", "mistral"):
        model, spec = _model(tiny_hf_models[arch])
        model.eval()
        seqs = _seqs([(4, 3), (2, 5), (3, 3), (1, 2), (6, 6), (5, 2), (2, 2)], seed=3)

        def logps(mbs, part):
            stats = run_pipeline([model], mbs, lambda out, mb: (out.new_zeros(()), {
                "logp": response_logprobs(out, mb, spec, temperature=0.8)[0]}), forward_only=True)
            return [st["logp"][b, :len(part[i].response_ids)] for mb, st in zip(mbs, stats) for b, i in enumerate(mb.seq_ids)]

        mbs = build_microbatches(seqs, budget=40, device=CPU)
        assert len(mbs) == 2 and max(len(mb.seq_ids) for mb in mbs) >= 4
        packed = dict(zip([i for mb in mbs for i in mb.seq_ids], logps(mbs, seqs)))
        for i in range(len(seqs)):
            (alone,) = build_microbatches([seqs[i]], budget=40, device=CPU)
            alone.packed_seq_params = None  # one unpacked, right-padded row: plain causal attention
            torch.testing.assert_close(packed[i], logps([alone], [seqs[i]])[0], atol=1e-5, rtol=0)
