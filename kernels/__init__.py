"""Triton kernels for megarl (log-probs, entropy, advantages, losses) with torch references."""
