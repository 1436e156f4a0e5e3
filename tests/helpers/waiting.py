"""Waiting on an event, never on a time."""
import time


def wait_for(predicate, what: str = "a condition", timeout: float = 60.0):
    """Poll `predicate` until it returns something true, and return that. The deadline
    only catches a hang: every wait in the tests is on an event, never on a time."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return result
