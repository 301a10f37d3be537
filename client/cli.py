"""``medim-client --site=NAME``: run this hospital's node (``flower-supernode``) until stopped.

``--site`` is a site file (``configs/site/NAME.yaml`` for a bare name, or a path). The log goes to
``<state_dir>/logs/medim-client.log`` and to stdout. Exit codes: 0 stopped by Ctrl-C/SIGTERM, 2 the site config
is refused, 3 the coordinator refused this site or could not be verified, 4 gave up reconnecting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from client.node import Backoff, load_deployable_site, supervise
from client.processes import Shutdown, become_subreaper, shutdown_on_signals, stop_descendants
from medim.config import ConfigError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medim-client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", required=True, help="site name (configs/site/NAME.yaml) or a site file")
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=None,
        help="reconnect attempts before giving up (default: forever)",
    )
    parser.add_argument(
        "--backoff", type=float, default=1.0, help="first reconnect delay in s (doubles, max 60)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        site = load_deployable_site(args.site)
    except ConfigError as err:
        print(f"medim-client: refusing to start: {err}", file=sys.stderr)
        return 2
    log = Path(site.config.state_dir) / "logs" / "medim-client.log"
    log.parent.mkdir(parents=True, exist_ok=True)

    def say(line: str) -> None:
        print(line, flush=True)
        if line.startswith("medim-client:"):
            with log.open("a") as fh:
                fh.write(line + "\n")

    become_subreaper()
    say(f"medim-client: site {site.config.name} -> {site.config.coordinator}  (log {log})")
    try:
        with shutdown_on_signals():
            outcome = supervise(
                site.config,
                site.path,
                log=log,
                backoff=Backoff(initial=args.backoff, max_restarts=args.max_restarts),
                say=say,
            )
    except Shutdown as stop:
        stop_descendants()
        say(f"medim-client: stopped ({stop})")
        return 0
    stop_descendants()
    say(f"medim-client: {outcome.message}")
    print(f"medim-client: {outcome.message}", file=sys.stderr)
    return 3 if outcome.reason != "gave-up" else 4


if __name__ == "__main__":
    sys.exit(main())
