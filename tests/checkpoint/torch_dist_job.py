"""torchrun job (gloo): a torch_dist checkpoint written by tools/convert_hf_to_megatron.py, read at
TP x PP (argv) by megatron-core the way Megatron-LM loads (`{"model": sharded_state_dict()}`, strict
`load_state_dict`) and by megarl's loader; both equal, bitwise, to the model loaded from HF, weights
and logits; then saved again at this layout (megarl.checkpoint.torch_dist.save_model) into argv[5].
argv[6], when given, is the expert-parallel size (a mixture-of-experts model). Prints OK on rank 0."""

import sys
from pathlib import Path

import torch


def main():
    hf_dir, root, tp, pp, save_to = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    from megarl.checkpoint.torch_dist import TRACKER_FILE, iteration_dir_name, load_model_weights, save_model
    from megarl.models.build import build_model
    from megarl.models.hf_io import load_hf_into_model
    from megarl.models.spec import ModelSpec
    from megarl.runtime.distributed import init_runtime

    ep = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    init_runtime(tp, pp, ep=ep)
    iteration = int((root / TRACKER_FILE).read_text())
    iter_dir = root / iteration_dir_name(iteration)
    assert dist_checkpointing.check_is_distributed_checkpoint(str(iter_dir)), iter_dir
    spec = ModelSpec.from_hf(root / "hf")
    from_hf = build_model(spec, dtype=torch.float32)
    load_hf_into_model(from_hf, hf_dir, spec)

    fresh = build_model(spec, dtype=torch.float32)  # megatron-core's own loading path, as Megatron-LM's --load
    loaded = dist_checkpointing.load({"model": fresh.sharded_state_dict()}, str(iter_dir))
    fresh.load_state_dict(loaded["model"], strict=True)
    assert loaded["iteration"] == iteration and loaded["args"].tensor_model_parallel_size == 1

    by_megarl = build_model(spec, dtype=torch.float32)
    load_model_weights(by_megarl, root)

    reference = dict(from_hf.named_parameters())
    for model in (fresh, by_megarl):
        for name, param in model.named_parameters():
            assert torch.equal(param, reference[name]), name
    if pp == 1:  # (at PP > 1 a stage's forward needs the pipeline schedule; the weights above are compared)
        tokens = torch.randint(0, spec.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
        positions = torch.arange(12).expand(2, 12)
        with torch.no_grad():
            logits = [m.eval()(tokens, positions, None) for m in (from_hf, fresh, by_megarl)]
        if ps.is_pipeline_last_stage():
            assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])
    save_model(by_megarl, save_to, root / "hf")
    if torch.distributed.get_rank() == 0:
        print("OK")


if __name__ == "__main__":  # megatron's checkpoint writer and reader start helper processes
    main()
