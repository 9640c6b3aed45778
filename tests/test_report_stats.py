"""The report's own statistic (the sample-ratio check) against published values;
the comparisons' are router/stats' (test_stats_engine.py, test_stats_calibration.py)."""

from __future__ import annotations

import pytest

from router.report.stats import sample_ratio


@pytest.mark.parametrize(
    ("observed", "mismatch"),
    [
        ({"v1": 9000, "v2": 1000}, False),
        ({"v1": 9000, "v2": 850}, True),
        ({"v1": 10, "v2": 0}, False),
    ],
)
def test_sample_ratio_flags_only_real_mismatches(
    observed: dict[str, float], mismatch: bool
) -> None:
    assert sample_ratio(observed, {"v1": 90.0, "v2": 10.0}).mismatch is mismatch


def test_a_version_outside_the_split_getting_users_is_a_mismatch() -> None:
    result = sample_ratio({"v1": 100, "v3": 5}, {"v1": 100.0})
    assert result.mismatch
    assert result.p_value == 0.0
