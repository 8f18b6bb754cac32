"""Checkpoints: megarl's Megatron checkpoint format, streaming HF <-> Megatron conversion and
TP/PP resharding (offline, no torch.distributed), the trainer's live save/load (live.py), Megatron's
torch_dist format (torch_dist.py: resume state and Megatron-LM-layout model checkpoints), and a
training run's checkpoints (manager.py: CheckpointManager saves, verifies, resumes and prunes
them; export_hf writes HF exports)."""

from megarl.checkpoint.convert import ConversionReport, hf_to_megatron, iter_hf_tensors, megatron_to_hf, reshard
from megarl.checkpoint.format import MegatronCheckpoint, MegatronCheckpointMeta
from megarl.checkpoint.safetensors_stream import CheckpointFormatError

__all__ = [
    "CheckpointFormatError",
    "ConversionReport",
    "MegatronCheckpoint",
    "MegatronCheckpointMeta",
    "hf_to_megatron",
    "iter_hf_tensors",
    "megatron_to_hf",
    "reshard",
]
