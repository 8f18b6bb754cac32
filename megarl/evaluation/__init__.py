"""Evaluation on math benchmarks through the rollout engine (built-in server or SGLang)."""
