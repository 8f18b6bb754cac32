"""The stages of one RL step, each a function from typed values to typed values (see megarl.train.trainer):
generate (with reward) -> log-probs -> advantages -> update -> sync, and the metrics they report."""
