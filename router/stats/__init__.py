"""Statistics an analyst can trust on real traffic: pure functions over per-user aggregates,
with no I/O, shared by the report and the guarded-rollout controller. Imports nothing of
the router's; needs NumPy (the `report` extra). docs/statistics.md explains each number."""

Z95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal
