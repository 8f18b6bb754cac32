"""The Megatron model inside its training wrappers (DDP, Float16Module), for code that reads its attributes."""


def unwrap_model(model):
    """The Megatron model inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model
