"""The weight-sync transports by name: what `rollout.transport` may be and what `weight_sync` implements.

Imports nothing, so the config lists the same names the pusher accepts without loading torch.
- tensor: CUDA IPC / shared-memory handles to servers on the trainer's node,
- distributed: a torch.distributed group (NCCL on GPUs) from trainer rank 0 to the servers,
- disk: safetensors files in a directory every server reads (a shared filesystem).
"""

TRANSPORTS = ("tensor", "distributed", "disk")
SESSION_TRANSPORTS = ("tensor", "distributed")  # the updates SGLang accepts only inside a begin/end session
