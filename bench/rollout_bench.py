"""Time and memory of the rollout controller on a large synthetic log (docs/rollout.md).

    python bench/rollout_bench.py [--records 5000000] [--seed 1] [--code DIR] [--evidence-only]

1. The log: bench/gen_logs.py writes it to bench/data/ (git-ignored); an existing file of the
   same size and seed is reused. Its two `config_loaded` ramp each model's candidate `v2`
   from 10% to 20%.
2. Two tables: both models ramping, their candidate at 20% (the step began with the second
   `config_loaded`, so it holds the second half of the day), and both rollouts finished
   (`state: promoted`: the controller reads the log and keeps nothing).
3. For each: `python -m router rollout --config T --log LOG --once --dry-run` in a child
   process, its wall time and peak RSS (`os.wait4`: that child's own rusage); and, for the
   ramping table, a child that reads the log into the controller's records and then times
   the evidence of each model's step alone (`step_of`: what each evaluation computes), with
   the users of each arm, so that two versions of the code can be compared on the numbers
   and on the evidence they give.

`--code DIR` runs the children on the code in DIR (a checkout of another commit, e.g.
`git archive HEAD~1 | tar -x -C /tmp/before`) instead of this tree. The numbers go to
stdout as JSON lines.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data"

# Both models ramp v2 by the same rules ({state}: where the ramp is).
ROLLOUT = """\
    rollout:
      candidate: v2
      steps: [10, 20, 50, 100]
      step_s: 600
      min_users: 500
      guardrails:
        error_rate: {{max_increase: 0.005}}
        latency_p95: {{max_increase: 0.2}}
        accuracy: {{max_decrease: 0.01}}
      {state}
"""

TABLE = """\
log:
  path: {log}
models:
  cancer:
    versions:
      v1: {{url: "http://127.0.0.1:9001"}}
      v2: {{url: "http://127.0.0.1:9002"}}
    split: {{v1: 80, v2: 20}}
{rollout}  books:
    versions:
      v1: {{url: "http://127.0.0.1:9001"}}
      v3: {{url: "http://127.0.0.1:9003"}}
      v2: {{url: "http://127.0.0.1:9002"}}
    split: {{v1: 70, v3: 10, v2: 20}}
{rollout}"""

# In a child: the log read into records, then each model's step timed alone.
EVIDENCE = """
import json, resource, sys, time
from decimal import Decimal
from router.rollout.evidence import step_of
from router.rollout.logs import LogFollower, Records
records, started = Records(), time.perf_counter()
for record in LogFollower([sys.argv[1]]).read():
    records.add(record, {"cancer", "books"})
read_s = time.perf_counter() - started
read_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {"read_s": round(read_s, 2), "rss_after_read_mib": round(read_rss, 1),
       "requests": sum(len(r) for r in records.requests.values()),
       "labels": len(records.labels)}
for model in ("cancer", "books"):
    started, cpu = time.perf_counter(), time.process_time()
    step = step_of(records, model, "v2", Decimal(20))
    out[model] = {"evidence_s": round(time.perf_counter() - started, 2),
                  "evidence_cpu_s": round(time.process_time() - cpu, 2),
                  "users": [step.candidate.users, step.control.users],
                  "requests": [int(step.candidate.n.sum()), int(step.control.n.sum())],
                  "labelled": [int(step.candidate.labelled.sum()),
                               int(step.control.labelled.sum())],
                  "errors": [int(step.candidate.errors.sum()), int(step.control.errors.sum())]}
out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print(json.dumps(out))
"""


def child(argv: list[str], code: Path) -> tuple[float, float, float, str]:
    """Run `argv` with `code` first on the path: wall seconds, CPU seconds (user and
    system: steadier than wall time on a shared machine), peak RSS (MiB), stdout."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, cwd=code, env=env, stdout=out)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv[:4])}: exit {os.waitstatus_to_exitcode(status)}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, text


def the_log(records: int, seed: int) -> Path:
    path = DATA / f"routing-{records}-seed{seed}.jsonl"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(ROOT / "bench" / "gen_logs.py"), str(path),
                        "--records", str(records), "--seed", str(seed)], check=True)  # fmt: skip
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--code", type=Path, default=ROOT, help="the code to measure")
    parser.add_argument("--evidence-only", action="store_true", help="skip the two runs")
    args = parser.parse_args(argv)
    log = the_log(args.records, args.seed)
    runs = () if args.evidence_only else (("ramping", ""), ("finished", "state: promoted"))
    with tempfile.TemporaryDirectory() as tmp:
        for name, state in runs:
            table = Path(tmp) / f"{name}.yaml"
            table.write_text(TABLE.format(log=log, rollout=ROLLOUT.format(state=state)))
            seconds, cpu, rss, text = child([sys.executable, "-m", "router", "rollout",
                                             "--config", str(table), "--once", "--dry-run"],
                                            args.code)  # fmt: skip
            lines = map(orjson.loads, text.splitlines())
            users = {line["model"]: line["users"] for line in lines}
            row: dict[str, Any] = {"run": f"rollout --once ({name})", "seconds": round(seconds, 1),
                                   "cpu_s": round(cpu, 1), "peak_rss_mib": round(rss, 1),
                                   "users": users}  # fmt: skip
            print(orjson.dumps(row).decode(), flush=True)
        seconds, cpu, rss, text = child([sys.executable, "-c", EVIDENCE, str(log)], args.code)
        detail = orjson.loads(text)
        print(orjson.dumps({"run": "evidence", "seconds": round(seconds, 1),
                            "cpu_s": round(cpu, 1), "peak_rss_mib": round(rss, 1),
                            **detail}).decode())  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
