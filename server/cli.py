"""``medim-server``: the coordinator. Starts ``flower-superlink`` (TLS + node authentication), registers the sites'
keys, submits the medim run, streams its progress and writes summary.json + report.html (see server/deploy.py).

Exit codes: 0 the run completed; 1 it failed or was interrupted (resume with --resume); 2 bad settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from client.processes import Shutdown, become_subreaper, shutdown_on_signals, stop_descendants
from medim.config import ConfigError
from server.deploy import Coordinator, CoordinatorSpec, check_coordinator


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medim-server", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="run folder (checkpoints, audit, state, logs)"
    )
    parser.add_argument(
        "--workspace", type=Path, required=True, help="bootstrapped workspace (base model, eval sets)"
    )
    parser.add_argument("--sites", nargs="+", required=True, help="the sites expected to join")
    parser.add_argument(
        "--certs", type=Path, default=Path("certs"), help="medim-certs folder (default certs/)"
    )
    parser.add_argument(
        "--site-key", action="append", default=[], metavar="NAME=PATH", help="a site's node.pub elsewhere"
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default all interfaces)")
    parser.add_argument("--port", type=int, default=9092, help="SuperLink port (default 9092)")
    parser.add_argument("--fl", default="small", help="fl preset (configs/fl/): tiny, small")
    parser.add_argument(
        "--rounds", type=int, default=None, help="number of rounds (default: the fl preset's)"
    )
    parser.add_argument(
        "--fl-overrides", default="{}", help='FLConfig fields as JSON, e.g. \'{"generation": {"every": 0}}\''
    )
    parser.add_argument("--diffusion", default="default", help="diffusion preset (configs/diffusion/)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument(
        "--insecure", action="store_true", help="plaintext, no node authentication (loopback tests only)"
    )
    return parser.parse_args(argv)


def _site_keys(pairs: list[str]) -> dict[str, Path]:
    keys = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--site-key {pair!r} is invalid: expected NAME=PATH")
        keys[name] = Path(path)
    return keys


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--fl-overrides is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise ConfigError("--fl-overrides is not a JSON object")
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.insecure:
        print(
            "medim-server: WARNING --insecure: plaintext, and any node can join without a registered key. "
            "Never use it outside a loopback test.",
            file=sys.stderr,
        )
    try:
        spec = CoordinatorSpec(
            out=args.out,
            workspace=args.workspace,
            sites=args.sites,
            certs=args.certs,
            host=args.host,
            port=args.port,
            fl_preset=args.fl,
            rounds=args.rounds,
            fl_overrides=_json_object(args.fl_overrides),
            diffusion=args.diffusion,
            resume=args.resume,
            insecure=args.insecure,
            site_keys=_site_keys(args.site_key),
        )
        check_coordinator(spec)
    except ConfigError as err:
        print(f"medim-server: refusing to start: {err}", file=sys.stderr)
        return 2

    def say(line: str) -> None:
        print(line, flush=True)

    become_subreaper()
    coordinator = Coordinator(spec, say)
    try:
        with shutdown_on_signals():
            try:
                summary = coordinator.run()
            finally:
                coordinator.shutdown()
    except Shutdown as stop:
        stop_descendants()
        print(f"medim-server: stopped ({stop}); continue with --resume", file=sys.stderr)
        return 1
    except (RuntimeError, OSError, ValueError) as err:
        stop_descendants()
        print(f"medim-server: {err}", file=sys.stderr)
        return 1
    stop_descendants()
    say(f"summary: {summary}  report: {summary.with_name('report.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
