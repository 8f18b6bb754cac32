"""The RL trainer: rollout -> reward -> log-probs -> advantages -> update -> weight sync -> log."""
