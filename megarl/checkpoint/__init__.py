"""Checkpoints, in one Megatron format: Megatron's torch_dist.

convert.py streams HF <-> torch_dist one tensor at a time (torch_dist_files.py writes and reads
the files without building the model), torch_dist.py is the trainer's side (resume state and
Megatron-LM-layout model checkpoints through megatron-core's dist_checkpointing), manager.py a
training run's checkpoints (CheckpointManager saves, verifies, resumes and prunes them; export_hf
streams the live actor into an HF directory), legacy.py reads megarl's retired own layout once,
to migrate it (tools/convert_megarl_layout_to_torch_dist.py)."""

from megarl.checkpoint.convert import ConversionReport, hf_to_torch_dist, torch_dist_to_hf
from megarl.checkpoint.safetensors_stream import CheckpointFormatError

__all__ = ["CheckpointFormatError", "ConversionReport", "hf_to_torch_dist", "torch_dist_to_hf"]
