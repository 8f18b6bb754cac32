"""Packing, DP sharding and mini-batch splitting; packed rows compute what separate rows do."""

import dataclasses

import torch

from megarl.train.batch import TrainSequence, build_microbatches, pack_rows, shard_for_data_parallel, split_minibatches


def _seqs(lengths):
    g = torch.Generator().manual_seed(0)
    out = []
    for i, (p, r) in enumerate(lengths):
        ids = torch.randint(1, 900, (p + r,), generator=g).tolist()
        out.append(TrainSequence(prompt_ids=ids[:p], response_ids=ids[p:], reward=float(i), group=i // 2))
    return out


def test_pack_rows_respects_budget_and_keeps_every_sequence():
    seqs = _seqs([(5, 7), (3, 2), (10, 10), (4, 4), (6, 1)])
    rows = pack_rows(seqs, budget=24)
    assert sorted(i for row in rows for i in row) == list(range(5))
    assert all(sum(seqs[i].length for i in row) <= 24 for row in rows)


def test_pack_rows_rejects_oversized_sequence():
    import pytest

    with pytest.raises(ValueError, match="exceeds actor.micro_batch_tokens=10; raise micro_batch_tokens to at least 20"):
        pack_rows(_seqs([(10, 10)]), budget=10)


def test_sequence_longer_than_a_row_gets_its_own_row_within_the_micro_batch_budget():
    seqs = _seqs([(10, 8), (3, 3), (2, 2)])
    rows = pack_rows(seqs, budget=8, limit=32)
    assert rows[0] == [0] and sorted(i for row in rows for i in row) == [0, 1, 2]
    mbs = build_microbatches(seqs, budget=24, device=torch.device("cpu"))
    assert all(mb.input_ids.numel() <= 24 for mb in mbs) and mbs[0].input_ids.shape == (1, 24)  # 18 padded to 8s
    assert sorted(i for mb in mbs for i in mb.seq_ids) == [0, 1, 2]


def test_shard_for_data_parallel_partitions_and_balances():
    seqs = _seqs([(5, 5), (2, 2), (8, 8), (1, 1), (3, 3), (4, 4)])
    parts = [shard_for_data_parallel(seqs, r, 2) for r in range(2)]
    ids = sorted(id(s) for p in parts for s in p)
    assert ids == sorted(id(s) for s in seqs)
    loads = [sum(s.length for s in p) for p in parts]
    assert abs(loads[0] - loads[1]) <= max(s.length for s in seqs)


def test_split_minibatches():
    assert split_minibatches(list(range(5)), 2) == [[0, 1], [2, 3, 4]] or split_minibatches(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    parts = split_minibatches(list(range(3)), 4)
    assert len(parts) == 4 and sorted(x for p in parts for x in p) == [0, 1, 2]


def test_microbatch_indices_point_at_response_predictions():
    seqs = _seqs([(4, 3), (2, 5)])
    (mb,) = build_microbatches(seqs, budget=64, device=torch.device("cpu"))
    labels = mb.labels.reshape(-1)
    for b, i in enumerate(mb.seq_ids):
        r = len(seqs[i].response_ids)
        idx = mb.resp_index[b, :r]
        assert labels[idx].tolist() == seqs[i].response_ids
        assert mb.resp_mask[b].sum() == r


def test_packed_row_equals_separate_rows(tiny_hf_models):
    """A Megatron actor on a packed row gives each sequence the log-probs it gets alone."""
    from megarl.models.build import build_model
    from megarl.models.hf_io import load_hf_into_model
    from megarl.models.spec import ModelSpec
    from megarl.runtime.distributed import init_runtime
    from megarl.train.workers import response_logprobs

    init_runtime(1, 1)
    path = tiny_hf_models["qwen2"]
    spec = ModelSpec.from_hf(path)
    model = build_model(spec)
    load_hf_into_model(model, path)
    model.eval()
    seqs = _seqs([(5, 6), (3, 4), (7, 2)])

    def logps(mb):
        with torch.no_grad():
            out = model(mb.input_ids, mb.position_ids, None, packed_seq_params=mb.packed_seq_params)
        return response_logprobs(out, mb, spec, temperature=0.7)[0]

    (packed,) = build_microbatches(seqs, budget=64, device=torch.device("cpu"))
    packed_lp = logps(packed)
    for b, i in enumerate(packed.seq_ids):
        (alone,) = build_microbatches([seqs[i]], budget=64, device=torch.device("cpu"))
        r = len(seqs[i].response_ids)
        torch.testing.assert_close(packed_lp[b, :r], logps(alone)[0, :r], atol=1e-5, rtol=0)
    # Two micro-batches (23 and 11 tokens, both padded to 24: the second mostly padding segments).
    multi = build_microbatches(seqs, budget=24, device=torch.device("cpu"))
    assert all(mb.input_ids.shape == (1, 24) for mb in multi)
    assert [len(mb.seq_ids) for mb in multi] == [2, 1]
    for mb in multi:
        lp = logps(mb)
        for b, i in enumerate(mb.seq_ids):
            (alone,) = build_microbatches([seqs[i]], budget=64, device=torch.device("cpu"))
            r = len(seqs[i].response_ids)
            torch.testing.assert_close(lp[b, :r], logps(alone)[0, :r], atol=1e-5, rtol=0)
    # And against transformers on the unpacked sequence.
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    s = seqs[0]
    with torch.no_grad():
        logits = ref(torch.tensor([s.prompt_ids + s.response_ids])).logits[0] / 0.7
    lp = torch.log_softmax(logits, -1)
    p = len(s.prompt_ids)
    expected = lp[p - 1:-1].gather(-1, torch.tensor(s.response_ids).unsqueeze(1)).squeeze(1)
    b = packed.seq_ids.index(0)
    torch.testing.assert_close(packed_lp[b, : len(s.response_ids)], expected, atol=1e-4, rtol=0)


def test_per_sequence_matrix_right_pads_ragged_values():
    from megarl.train.batch import per_sequence_matrix

    got = per_sequence_matrix([[1.0, 2.0], torch.tensor([3.0]), [], torch.tensor([4.0, 5.0, 6.0])], 4, torch.device("cpu"))
    want = torch.tensor([[1, 2, 0, 0], [3, 0, 0, 0], [0, 0, 0, 0], [4, 5, 6, 0]], dtype=torch.float32)
    assert torch.equal(got, want) and got.dtype == torch.float32


def test_logits_at_response_positions_only_give_the_same_logprobs_and_gradients(tiny_hf_models):
    """The actor's output layer on the selected positions (logit_index) equals the full logits
    read at resp_index: values and parameter gradients."""
    from megarl.models.build import build_model
    from megarl.models.hf_io import load_hf_into_model
    from megarl.models.logit_positions import only_positions, supports_position_selection
    from megarl.models.spec import ModelSpec
    from megarl.runtime.distributed import init_runtime
    from megarl.train.workers import response_logprobs

    init_runtime(1, 1)
    path = tiny_hf_models["llama"]
    spec = ModelSpec.from_hf(path)
    model = build_model(spec)
    load_hf_into_model(model, path)
    assert supports_position_selection(model)
    seqs = _seqs([(5, 6), (3, 4), (7, 2), (2, 9)])
    (mb,) = build_microbatches(seqs, budget=64, device=torch.device("cpu"))

    def run(select):
        model.zero_grad()
        with only_positions(mb.logit_index if select else None):
            out = model(mb.input_ids, mb.position_ids, None, packed_seq_params=mb.packed_seq_params)
        logp, ent = response_logprobs(out, dataclasses.replace(mb, logits_selected=select), spec, temperature=0.9)
        ((logp * mb.resp_mask).sum() + (ent * mb.resp_mask).sum()).backward()
        return out.shape, logp.detach(), ent.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    full_shape, logp, ent, grads = run(False)
    sel_shape, logp_s, ent_s, grads_s = run(True)
    assert sel_shape[:2] == (1, int(mb.resp_mask.sum())) and full_shape[:2] == tuple(mb.input_ids.shape)
    torch.testing.assert_close(logp_s, logp * mb.resp_mask, atol=1e-6, rtol=0)
    torch.testing.assert_close(ent_s, ent * mb.resp_mask, atol=1e-6, rtol=0)
    for name in grads:
        torch.testing.assert_close(grads_s[name], grads[name], atol=1e-6, rtol=1e-5)
