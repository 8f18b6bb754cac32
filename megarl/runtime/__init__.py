"""Runtime: device and backend choice, torch.distributed / Megatron parallel state, seeding."""
