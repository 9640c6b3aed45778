"""`model-router rollout`: the guarded-rollout controller (contract section 9).

`logs.py` follows the routing logs, `evidence.py` gathers a step's per-user evidence,
`decide.py` decides (a pure function of that evidence), `edit.py` rewrites the table's
split and state in place, and `controller.py` runs the loop.
"""
