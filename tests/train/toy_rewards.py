"""A reward function for tests, plugged in by import path (`reward.custom: toy_rewards:mentions_seven`).

It makes some prompt groups uniform and others mixed, so dynamic sampling has work to do."""


def mentions_seven(response: str, gold, metadata: dict) -> float:
    return 1.0 if "7" in response else 0.0
