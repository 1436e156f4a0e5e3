"""The metric charts' axes (ckptfs.web.charts): round ticks, and labels that tell each
tick from its neighbours however narrow or wide the metric's range."""
import pytest

pytest.importorskip("flask")  # ckptfs.web is the web extra's

from ckptfs.web.charts import nice_ticks  # noqa: E402


def labels(low, high):
    return [label for _, label in nice_ticks(low, high)]


@pytest.mark.parametrize("low, high", [
    (0.68828, 0.68838),      # an eval_loss that barely moves
    (0.5, 2.2), (100, 600), (0, 1e7), (-3e-6, 4e-6), (1e-9, 5e-9), (-1, 1),
])
def test_tick_labels_are_distinct_and_round_trip_close(low, high):
    ticks = nice_ticks(low, high)
    assert len(ticks) >= 2
    names = [label for _, label in ticks]
    assert len(set(names)) == len(names), names
    step = ticks[1][0] - ticks[0][0]
    for value, label in ticks:
        assert abs(float(label) - value) < step / 4, (value, label)


def test_labels_have_no_more_digits_than_the_step_needs():
    assert labels(100, 600) == ["100", "200", "300", "400", "500", "600"]
    assert labels(0.5, 2.2)[:3] == ["0.5", "1.0", "1.5"]
    assert labels(0.68828, 0.68838)[:2] == ["0.68828", "0.68830"]
    assert "-0.0" not in labels(-1, 1) and "0.0" in labels(-1, 1)

