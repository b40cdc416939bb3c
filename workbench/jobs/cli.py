"""``python -m workbench jobs``: the runs directory from a terminal (what the Train tab's runs table shows).

    python -m workbench jobs list [--all]
    python -m workbench jobs show NAME
    python -m workbench jobs log NAME [-n 40] [--follow]
    python -m workbench jobs abort NAME [--grace 10]
    python -m workbench jobs delete NAME [--force]
    python -m workbench jobs start --name NAME [--kind train] [--config CONFIG.yaml] -- COMMAND ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from workbench.config.base import WorkbenchError
from workbench.rundir import format_duration


def configure_jobs(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="runs, newest first", allow_abbrev=False)
    p.add_argument("--all", action="store_true", help="every kind of job, not only training")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("show", help="status.json of a run, checked against its processes", allow_abbrev=False)
    p.add_argument("name")
    p = sub.add_parser("log", help="the end of a run's log.txt", allow_abbrev=False)
    p.add_argument("name")
    p.add_argument("-n", type=int, default=40, help="lines (default 40)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until the job ends")
    p = sub.add_parser("abort", help="cancel a queued job or stop a running one (SIGTERM, then SIGKILL)",
                       allow_abbrev=False)
    p.add_argument("name")
    p.add_argument("--grace", type=float, default=None, help="seconds between SIGTERM and SIGKILL")
    p = sub.add_parser("delete", help="remove the run folder of a job that has ended (only folders `jobs` made)",
                       allow_abbrev=False)
    p.add_argument("name")
    p.add_argument("--force", action="store_true",
                   help="also when the folder holds an adapter, a model or checkpoints")
    p = sub.add_parser("start", help="run a command as a job (training and evaluation queue one at a time)",
                       allow_abbrev=False)
    p.add_argument("--name", required=True, help="a new run folder; an existing one is refused")
    p.add_argument("--kind", default="train")
    p.add_argument("--config", default=None, help="a YAML file copied into the run directory as config.yaml")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the command and its arguments")


def run_jobs(args) -> int:
    from workbench.jobs import store as jobs
    from workbench.jobs import runs

    if args.action == "list":
        summaries = runs.list_runs(kind=None if args.all else "train")
        if args.json:
            print(json.dumps([s.to_dict() for s in summaries], indent=2, default=str))
            return 0
        if not summaries:
            print(f"no runs in {runs._root(None)}")
            return 0
        rows = [["name", "kind", "state", "stage", "model", "dataset", "progress", "loss", "started", "duration"]]
        for s in summaries:
            state = s.state + (f" #{s.queue_position}" if s.queue_position else "")
            progress = f"{s.progress:.0%}" if s.progress is not None else ""
            rows.append([s.name, s.kind, state, s.stage, s.model, s.dataset, progress,
                         f"{s.loss:.4f}" if s.loss is not None else "",
                         time.strftime("%Y-%m-%d %H:%M", time.localtime(s.started)) if s.started else "",
                         format_duration(s.duration)])
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        return 0
    if args.action == "start":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            raise WorkbenchError("give the command after --, e.g. -- python -m workbench train my.yaml")
        config = None
        if args.config:
            from workbench.config.base import load_yaml

            config = load_yaml(args.config)
        job = jobs.start_job(args.kind, args.name, argv, config)
        st = job.status()
        print(f"{job.name}: {st['state']}" + (f" (position {st['queue_position']})" if st.get("queue_position") else "")
              + f" — {job.path}")
        return 0
    job = jobs.get_job(args.name)
    if args.action == "show":
        print(json.dumps(job.status(), indent=2))
    elif args.action == "log":
        print(job.tail_log(args.n))
        if args.follow:
            size = job.log_path.stat().st_size
            while True:
                with open(job.log_path, "rb") as f:
                    f.seek(size)
                    data = f.read()
                size += len(data)
                if data:
                    sys.stdout.write(data.decode("utf-8", errors="replace"))
                    sys.stdout.flush()
                if job.state in jobs.FINAL_STATES and not data:
                    break
                time.sleep(0.5)
    elif args.action == "abort":
        st = job.abort(grace=args.grace)
        print(f"{job.name}: {st['state']}")
    elif args.action == "delete":
        job.delete(force=args.force)
        print(f"deleted {job.path}")
    return 0
