"""A reward function for tests, plugged in by import path (`reward.custom: toy_rewards:mentions_seven`).

It makes some prompt groups uniform and others mixed, so dynamic sampling has work to do."""


def mentions_seven(response: str, gold, metadata: dict) -> float:
    return 1.0 if "7" in response else 0.0


def mentions_seven_then_crash(response: str, gold, metadata: dict) -> float:
    """`mentions_seven`, but the process dies (SIGKILL, as in a node failure) at grading call
    number $MEGARL_TEST_CRASH_AT_CALL, once (counted in $MEGARL_TEST_CRASH_COUNTER), so a test can kill
    a run at a known point however fast its steps are. Without the variables it never crashes."""
    import os
    import signal
    from pathlib import Path

    at, counter = os.environ.get("MEGARL_TEST_CRASH_AT_CALL"), os.environ.get("MEGARL_TEST_CRASH_COUNTER")
    if at and counter:
        path = Path(counter)
        calls = int(path.read_text() or 0) + 1 if path.exists() else 1
        path.write_text(str(calls))
        if calls == int(at):  # once: the resumed run goes past it
            os.kill(os.getpid(), signal.SIGKILL)
    return mentions_seven(response, gold, metadata)


def always_zero(response: str, gold, metadata: dict) -> float:
    """Every group uniform: dynamic sampling can never fill a batch."""
    return 0.0
