"""Catalog entry 1: a nightly job exits 0 and emails an empty summary; `agentguard run` fails it.

The job's only failure check is `if rows is None`. The night the upstream API key expires,
the query returns `rows == []`, the script prints an empty body and exits 0: cron, the
exit code and the dashboard all say fine. Wrapped in `agentguard run`, exit status and
output content are two signals: the third night exits 3 with the reasons.

Runs the real CLI (`python -m agentguard run ...`) three times, offline, with its store in a
temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SUMMARY_JOB = '''\
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]   # [] when the upstream key has expired
if rows is None:                               # the job's only failure check
    sys.exit("no data")
body = "\\n".join(f"- {r['region']}: {r['orders']} orders" for r in rows)
if rows:
    print(f"Summary: {sum(r['orders'] for r in rows)} orders in {len(rows)} regions")
print(body)
'''

HEALTHY = [
    {"region": "north", "orders": 120},
    {"region": "south", "orders": 98},
    {"region": "east", "orders": 143},
    {"region": "west", "orders": 87},
]


def night(workdir: Path, store: Path, rows: list[dict[str, object]]) -> dict[str, object]:
    """One cron run of the job under `agentguard run`; returns its JSON verdict."""
    data = workdir / "rows.json"
    data.write_text(json.dumps({"rows": rows}))
    command = [
        sys.executable, "-m", "agentguard", "run",
        "--name", "daily-summary",
        "--expect", "^Summary:",
        "--min-history", "2",           # compare with the median after two healthy nights
        "--max-duration-ratio", "100",  # duration is checked too; generous on a noisy demo box
        "--store", str(store),
        "--json",
        "--", sys.executable, str(workdir / "summary.py"), str(data),
    ]  # fmt: skip
    env = dict(os.environ)
    env.pop("AGENTGUARD_STORE", None)
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    verdict: dict[str, object] = json.loads(done.stderr.strip().splitlines()[-1])
    verdict["body"] = done.stdout
    verdict["returncode"] = done.returncode
    return verdict


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "summary.py").write_text(SUMMARY_JOB)
        store = workdir / "agentguard.db"
        print("cron: agentguard run --name daily-summary --expect '^Summary:' -- python summary.py")
        for n, rows, story in [
            (1, HEALTHY, "4 regions of orders"),
            (2, [*HEALTHY[:3], {"region": "west", "orders": 91}], "4 regions again"),
            (3, [], "the upstream API key expired: rows == [], the script still exits 0"),
        ]:
            v = night(workdir, store, rows)
            body = str(v["body"])
            first = body.splitlines()[0] if body.strip() else "(empty body)"
            print(f"\nnight {n}: {story}")
            size = f"{len(body)} byte{'' if len(body) == 1 else 's'}"
            print(f"  the job printed {size}: {first}")
            print(f"  the job exited {v['command_exit']}; agentguard run exited {v['returncode']}")
            print(f"  verdict: {str(v['status']).upper()}")
            for anomaly in v["anomalies"]:  # type: ignore[attr-defined]
                print(f"    - {anomaly['check']}: {anomaly['reason']}")
        print(
            "\nExit 3 means: the command exited 0 but its output is not usable. Cron mails it, "
            "the run and its anomalies are in the store (`agentguard history daily-summary`, "
            "`agentguard audit`), and the empty summary was never mistaken for a quiet day."
        )


if __name__ == "__main__":
    main()
