"""Seeds in the range each random number generator takes (no torch import: the Slurm launcher uses it)."""


def fold_seed(seed: int, bits: int) -> int:
    """`seed` reduced into [0, 2**bits) for an RNG that takes only that range (NumPy: 32 bits,
    torch: 64, SGLang's sampling_seed: a signed 64-bit long); seeds already in range are unchanged."""
    return seed % (1 << bits)
