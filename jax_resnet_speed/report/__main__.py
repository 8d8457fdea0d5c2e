"""python -m jax_resnet_speed.report FILE... [--json OUT] [--plot PNG] [--targets LIST]"""

from __future__ import annotations

import argparse
import importlib.util
import json
from collections.abc import Sequence

from jax_resnet_speed import install_hint, paths
from jax_resnet_speed.flags import parse_targets
from jax_resnet_speed.report import MergeError, merge
from jax_resnet_speed.report.console import run_line, summary_line, targets_line
from jax_resnet_speed.report.files import histogram, write_json


def main(argv: Sequence[str] | None = None) -> int:
    """python -m jax_resnet_speed.report FILE...: merge the result JSONs of one config into one summary."""
    import sys

    parser = argparse.ArgumentParser(prog="python -m jax_resnet_speed.report",
                                     description="Merge result JSONs of one config (from --json) into one summary.")
    parser.add_argument("files", nargs="+", metavar="FILE", help="result JSONs of python -m jax_resnet_speed.train")
    parser.add_argument("--json", metavar="PATH", help="write the merged result here")
    parser.add_argument("--plot", metavar="PNG", help="histogram of the final accuracies, the target marked")
    parser.add_argument("--targets", type=parse_targets, metavar="LIST",
                        help="also the seconds to each of these accuracies (e.g. 0.93,0.935,0.94), from the "
                             "per-epoch records, under the recipe's timing rule")
    args = parser.parse_args(argv)
    try:
        paths.check_output_file(args.json, "--json")
        paths.check_output_file(args.plot, "--plot")
    except paths.PathError as error:
        parser.error(str(error))
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print(f"error: --plot draws with matplotlib; install it with {install_hint('plot')}", file=sys.stderr)
        return 1
    try:
        payloads = []
        for name in args.files:
            try:
                with open(name) as handle:
                    payload = json.load(handle)
            except (OSError, ValueError) as error:
                raise MergeError(f"cannot read {name}: {error}") from None
            if not (isinstance(payload, dict) and isinstance(payload.get("config"), dict)
                    and isinstance(payload.get("runs"), list)):
                raise MergeError(f"{name} is not a result JSON (no config and runs); give files written by "
                                 "--json of the trainer")
            payloads.append((name, payload))
        merged = merge(payloads)
    except MergeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    target = merged["config"]["recipe"]["timing"]["target"]
    for record in merged["runs"]:
        print(run_line(record, target))
    print(summary_line(merged["summary"], target))
    if args.targets:
        print(targets_line(merged["runs"], args.targets, merged["config"]["recipe"]["timing"].get("rule", "myrtle")))
    if args.json:
        write_json(args.json, merged)
        print(f"wrote {args.json}")
    if args.plot:
        histogram(merged, target, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
