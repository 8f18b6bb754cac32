"""Defect 1 of issue 11: megarl passed CPU tensors to collectives on an NCCL default group.

What a CPU machine can show (2 processes over gloo, tests/runtime/collectives_job.py):
- With the default group created as `init_process_group("cuda:gloo")`, which maps only the GPU
  device type as NCCL's does, the pre-fix call style (a CPU tensor straight into
  `dist.all_reduce`) fails with "No backend type associated with device type cpu".
- megarl.runtime.collectives resolves that group's communication device to the GPU device type
  and tries to move the tensor there; a CPU-only torch cannot allocate it, so on this machine the
  helper's call ends in torch's "not compiled with CUDA" error instead of the backend error. That
  the reduction then succeeds on a GPU is NOT shown here: tools/gpu_check.sh runs the trainer
  with NCCL on a GPU for that.
- On a plain gloo group the helpers resolve to the CPU and megarl's real functions that met the
  defect (whitening across DP ranks, the trainer's loss normalizer, stats reduction and stop
  flag, export's stage source rank) give the values a single process computes.
"""

import json

from dist_utils import torchrun


def test_collectives_resolve_the_groups_device_and_megarls_reductions_agree(tmp_path):
    torchrun(["tests/runtime/collectives_job.py", str(tmp_path)], nproc=2, timeout=300)
    reports = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in range(2)]
    for rank, rep in enumerate(reports):
        # GPU-only group: the defect, and where the helper sends the tensor instead.
        assert rep["gpu_only_backend_config"] == "cuda:gloo"
        assert "No backend type associated with device type cpu" in rep["direct_cpu_all_reduce"]
        assert rep["communication_device_is_gpu"] is True
        assert "No backend type associated" not in rep["helper_all_reduce"]
        assert "CUDA" in rep["helper_all_reduce"]  # torch refused to allocate on the GPU
        # Plain gloo: CPU, and the helpers' semantics.
        assert rep["gloo_communication_device"] == "cpu" and rep["dp"] == 2
        assert rep["all_reduce_view"] == [3.0, 6.0, 3.0 * (rank + 1)]  # only the view was reduced, in place
        assert rep["all_reduce_max"] == [1.0]
        assert rep["all_gather"] == [[0, 10], [1, 11]]
        assert rep["broadcast"] == [7.0]
        assert rep["objects"] == [{"from": 0}] and rep["gathered_objects"] == ["r0", "r1"]
        # megarl's own reductions.
        assert rep["whiten_matches_union"] is True
        assert rep["normalizer"] == {"tokens": 14.0, "sequences": 4.0, "num_microbatches": 2, "dp": 2}
        assert abs(rep["reduce_stats"]["actor/pg_loss"] - 6.0 / 8.0) < 1e-12
        assert abs(rep["reduce_stats"]["actor/entropy"] - 2.0 / 6.0) < 1e-12
        assert rep["stop_requested"] is True  # rank 1 alone received the signal
        assert rep["stage_source_rank"] == 0
    assert reports[1]["recv"] == [0.0, 1.0, 2.0, 3.0]
