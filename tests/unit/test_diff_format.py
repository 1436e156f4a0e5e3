"""How `ckptfs diff` and the dashboard's diff page show a metric's change
(ckptfs.meta.diff.change_text): to the precision the values themselves are shown with."""
import pytest

from ckptfs.meta.diff import change_text


@pytest.mark.parametrize("a, b, shown", [
    (0.688285, 0.688317, "+0.000032"),   # not "+3.21269e-05"
    (1.0, 0.5, "-0.5"), (0.5, 0.5, "+0"), (0.74, 0.82, "+0.08"), (100, 200, "+100"),
    (1e9, 1.001234567e9, "+1234567"), (1e-9, 1.003e-9, "+3e-12"),
])
def test_a_metrics_change_is_shown_to_the_values_own_precision(a, b, shown):
    assert change_text(b - a, a, b) == shown
