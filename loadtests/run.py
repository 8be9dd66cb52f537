"""Run the Locust load test headless against a running u2serve and write CSV and HTML reports.

    python loadtests/run.py                       # `make serve`'s server, 8 users for 60 s, into loadtests/out/
    python loadtests/run.py --users 4 --run-time 20s --host 127.0.0.1:7070 -- --model u2net

Arguments after `--` go to locust (and the locustfile: --model, --images, --key-file).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def locust_command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """The locust command line these options stand for."""
    out: Path = args.out
    return [
        sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
        "-u", str(args.users), "-r", str(args.spawn_rate or args.users), "-t", args.run_time,
        "--host", args.host, "--csv", str(out / "u2serve"), "--html", str(out / "report.html"), "--only-summary",
        *extra,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1:7070", help="gRPC inference host:port")
    parser.add_argument("--users", type=int, default=8, help="concurrent callers, one request in flight each")
    parser.add_argument("--spawn-rate", type=float, default=None, help="users started per second; default all at once")
    parser.add_argument("--run-time", default="60s", help="e.g. 30s, 5m")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="folder for u2serve_*.csv and report.html")
    args = parser.parse_args(ours)
    if args.users < 1:
        parser.error("--users must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # The SDK of this checkout, should it not be installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "client"), env.get("PYTHONPATH")]))
    command = locust_command(args, extra)
    print(" ".join(command), flush=True)
    code = subprocess.run(command, cwd=ROOT, env=env).returncode
    print(f"reports: {args.out / 'u2serve_stats.csv'}, {args.out / 'report.html'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
