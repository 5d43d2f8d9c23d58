"""The opchain command: run chains or one operation, see what is stale and why, compare results.

Running goes through a snakemake subprocess (not Snakemake's Python API, which ignores profiles),
so `opchain run` behaves exactly like `snakemake` in the project folder, and passes on every
argument it does not know itself.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from opchain import __version__, gc, lineage, spec, table, verify
from opchain.convert import export_dataset, import_dataset
from opchain.errors import OpchainError, storage_errors
from opchain.index import Index
from opchain.operations import sources
from opchain.operations.sources import set_project_folder
from opchain.plan import PROJECT_OPERATIONS, ChainPlan, Plan, Step, plan_from_config
from opchain.project import WORKFLOW, init_project
from opchain.statistics import stats_table
from opchain.storage import inside_storage, storage_root

__all__ = ["entrypoint", "main", "main_parser"]


def main_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opchain", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"opchain {__version__}")
    parser.add_argument("--config", default="config/config.yaml", help="the opchain config file")
    parser.add_argument(
        "--snakefile",
        type=Path,
        default=None,
        help="the Snakefile (default: ./Snakefile, else the workflow opchain ships)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser(
        "init", help="make a project folder: config with the example chains, a Snakefile, profiles"
    )
    init.add_argument("folder", type=Path, help="the new project's folder (new or empty)")
    commands.add_parser(
        "run",
        help="run the configured chains: snakemake, with every other argument passed on "
        "(opchain run -n, opchain run --cores 1)",
    )
    one = commands.add_parser(
        "run-op",
        help="run one operation file on a summary, outside a chain (other arguments go to snakemake)",
    )
    one.add_argument("operation", help="an operation file")
    one.add_argument("input_path", help="a summary (folder of datasets) under the storage root")
    status = commands.add_parser("status", help="which steps would run, and why")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    listing = commands.add_parser("list", help="the chains' result directories, step by step")
    listing.add_argument("--all", action="store_true", help="every result directory, used or not")
    results = commands.add_parser("results", help="the chains' results tables (results.csv)")
    results.add_argument("chains", nargs="*", help="chain names (default: the configured chains)")
    results.add_argument("--format", choices=("table", "csv", "json"), default="table")
    results.add_argument("--summary", action="store_true", help="mean, std, n of scores over runs")
    results.add_argument("--score", help="only the rows, and columns, of this score")
    results.add_argument("--sort", help="sort by this column (--sort=-COLUMN: descending)")
    results.add_argument(
        "--stats", action="store_true", help="the chains' statistics: paired tests of a score"
    )
    show = commands.add_parser("show", help="a result: parameters, scores, lineage, data")
    show.add_argument("path", type=Path, help="a dataset_<k>, step or chain directory")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    collect = commands.add_parser("gc", help="remove result directories no configured chain uses")
    collect.add_argument("--keep-last", type=int, default=0, metavar="N", help="keep the N newest")
    collect.add_argument("--older-than", type=float, metavar="DAYS", help="only those older")
    collect.add_argument("--dry-run", action="store_true", help="only print what would go")
    check = commands.add_parser(
        "verify", help="re-hash stored datasets against their checksums; report the damaged ones"
    )
    check.add_argument(
        "paths", nargs="*", type=Path, help="datasets or folders (default: what the chains use)"
    )
    check.add_argument("--all", action="store_true", help="every dataset under the storage root")
    check.add_argument(
        "--remove-damaged",
        action="store_true",
        help="remove damaged results (never inputs), so the next snakemake recomputes them",
    )
    bring = commands.add_parser(
        "import", help="bring .h5ad, .npz, .npy or .csv data into the storage root as a dataset"
    )
    bring.add_argument("source", type=Path, help="the file to import")
    bring.add_argument("dest", help="the new dataset, relative to the storage root")
    bring.add_argument("--rows", default="cell", help="the row axis' name (AnnData: obs)")
    bring.add_argument("--columns", default="gene", help="the column axis' name (AnnData: var)")
    take = commands.add_parser("export", help="write a dataset as .h5ad or .npz (scanpy, numpy)")
    take.add_argument("dataset", type=Path, help="a dataset directory")
    take.add_argument("target", type=Path, help="the file to write (.h5ad or .npz)")
    take.add_argument("--matrix", help="the matrix to export as X (default: the first)")
    for flag, what in (("--rows", "obs"), ("--columns", "var")):
        take.add_argument(
            flag,
            help=f"a dataset of vectors only: the {what} axis (default: from the matrix its "
            "step read, else cell and gene)",
        )
    ops = commands.add_parser(
        "operations", help="the available operations; with a NAME, its parameters and an example"
    )
    ops.add_argument("name", nargs="?", help="an operation's name")
    index = commands.add_parser(
        "index", help="what the fingerprint index holds; --rebuild recreates it from the results"
    )
    index.add_argument(
        "--rebuild",
        action="store_true",
        help="recreate the index from the results' metadata.yaml and chain.yaml files",
    )
    return parser


PASSED_ON = ("run", "run-op")  # commands whose unknown arguments are snakemake's


def main(cli_args: Sequence[str]) -> int:
    parser = main_parser()
    args, extra = parser.parse_known_args(cli_args)
    if args.command not in PASSED_ON and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "results" and args.stats and (args.summary or args.score):
        parser.error("--stats prints the statistics files: it takes no --summary or --score")
    extra = [a for a in extra if a != "--"]  # `opchain run -- -n` as `opchain run -n`
    try:
        if args.command == "run":
            return snakemake(args.snakefile, args.config, extra)
        if args.command == "run-op":
            operation = ["--config", f"operation={args.operation}", f"input_path={args.input_path}"]
            return snakemake(args.snakefile, args.config, [*operation, *extra])
        if args.command == "init":
            init_project(args.folder)
            print(f"made the opchain project {args.folder}: cd there and run snakemake --cores all")
            return 0
        if args.command == "export":  # needs no config: any dataset, anywhere
            export_dataset(args.dataset, args.target, args.matrix, args.rows, args.columns)
            print(f"exported {args.dataset} to {args.target}")
            return 0
        config = load_config(args.config)
        if args.command == "import":
            dest = inside_storage(storage_root(config), args.dest, args.source)
            import_dataset(args.source, dest, args.rows, args.columns)
            print(f"imported {args.source} as {args.dest} under {storage_root(config)}")
            return 0
        if args.command == "operations":
            set_project_folder(Path(config.get("operations_code", PROJECT_OPERATIONS)))
            print(sources.details(args.name) if args.name else sources.catalog(), end="")
            return 0
        if args.command == "index":  # without planning: the plan may be what a damaged index stops
            return show_index(Index(storage_root(config)), rebuild=args.rebuild)
        if args.command == "show":
            print(lineage.show_text(args.path, as_json=args.json), end="")
            return 0
        plan = plan_from_config(config)
        if args.command == "status":
            return show_status(plan, as_json=args.json)
        if args.command == "list":
            return gc.show_all(plan) if args.all else show_list(plan)
        if args.command == "results":
            dirs = table.chain_dirs(plan.storage, args.chains, [c.dir for c in plan.chains])
            if args.stats:
                found = table.select(stats_table(dirs), summary=False, score=None, sort=args.sort)
                print(table.formatted(found, args.format), end="")
                return 0
            text = table.results_text(
                dirs, args.format, summary=args.summary, score=args.score, sort=args.sort
            )
            print(text, end="")
            return 0
        if args.command == "verify":
            if args.remove_damaged:
                gc.refuse_while_running("verify --remove-damaged")
            results, inputs = verify.targets(plan, args.paths, args.all)
            with storage_errors(plan.storage):  # --remove-damaged on a read-only root: one line
                return verify.verify(
                    plan.storage, results, inputs, remove_damaged=args.remove_damaged
                )
        return gc.collect(plan, args.keep_last, args.older_than, dry_run=args.dry_run)
    except OpchainError as error:
        print(f"opchain: {error}", file=sys.stderr)
        return 1


def load_config(path: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise OpchainError(f"{path}: no such config file (run opchain in the project folder)")
    return spec.load_config(Path(path))


def find_snakefile(given: Path | None) -> Path:
    """The Snakefile to run: the one given, the project's own, or the one opchain ships."""
    for candidate in (given, Path("Snakefile"), WORKFLOW / "Snakefile"):
        if candidate is not None and candidate.is_file():
            return candidate
    raise OpchainError(f"{given}: no such Snakefile")


def snakemake(snakefile: Path | None, config: str, extra: list[str]) -> int:
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(find_snakefile(snakefile)),
        "--configfile",
        config,
        *extra,
    ]
    if not any(a.startswith(("--cores", "-c", "--jobs", "-j", "--profile")) for a in extra):
        command += ["--cores", "all"]
    return subprocess.call(command)


def step_reasons(step: Step, previous: dict[str, Any] | None) -> list[str]:
    """Why a step that has no result would run: what changed against the last compiled chain."""
    if previous is None:
        return ["never run"]
    before = previous.get("components", {})
    now = step.components
    reasons = []
    if before.get("settings") != now["settings"]:
        reasons.append(
            f"parameters changed: {settings_change(before.get('settings'), now['settings'])}"
        )
    if (before.get("code"), before.get("version")) != (now["code"], now["version"]):
        reasons.append(f"operation code changed ({now['operation']})")
    if before.get("upstream") != now["upstream"]:
        reasons.append(
            "input data changed"
            if now["upstream"].startswith("input:")
            else "an earlier step changed"
        )
    changed = {"operation", "format", "seed", "upstream_constraints"} & {
        k for k in before.keys() | now.keys() if before.get(k) != now.get(k)
    }
    reasons += [f"{key} changed" for key in sorted(changed)]
    return reasons or ["result missing"]


def settings_change(before: list[dict[str, Any]] | None, now: list[dict[str, Any]]) -> str:
    """What changed in a step's settings, key by key (``test_fraction: 0.3 -> 0.2``); for grids
    that changed in size, the values each key takes before and after."""
    before = before or []
    if len(before) == len(now):
        changes = {
            f"{key}: {old.get(key)} -> {new.get(key)}"
            for old, new in zip(before, now, strict=True)
            for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key)
        }
        return ", ".join(sorted(changes))
    keys = sorted({k for s in before + now for k in s})

    def values(settings: list[dict[str, Any]], key: str) -> list[Any]:
        return list(dict.fromkeys(json.dumps(s.get(key)) for s in settings))

    return ", ".join(
        f"{key}: [{', '.join(values(before, key))}] -> [{', '.join(values(now, key))}]"
        for key in keys
        if values(before, key) != values(now, key)
    )


def chain_status(plan: Plan, chain: ChainPlan) -> list[dict[str, Any]]:
    manifest = plan.storage / chain.dir / "chain.yaml"
    last = yaml.safe_load(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
    rows = []
    for r, steps in enumerate(chain.runs):
        old = (last.get("runs") or [])[r]["steps"] if r < len(last.get("runs") or []) else []
        for i, step in enumerate(steps):
            done = not step.incomplete  # as the plan tells snakemake: they agree
            rows.append(
                {
                    "chain": chain.spec.name,
                    "run": r,
                    "step": i + 1,
                    "operation": step.operation.operation.name,
                    "dir": step.dir,
                    "status": "up to date" if done else "will run",
                    "why": [] if done else step_reasons(step, old[i] if i < len(old) else None),
                    "excluded": step.operation.excluded,  # settings its constraints dropped
                    # (setting, upstream dataset or combination) pairs its upstream constraints did
                    "upstream_excluded": step.upstream_excluded,
                }
            )
    return rows


def show_status(plan: Plan, *, as_json: bool) -> int:
    rows = [row for chain in plan.chains for row in chain_status(plan, chain)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if any(row["status"] == "will run" for row in rows):
        print(
            "(directories of steps that will run are provisional: names are given when the run starts)"
        )
    for row in rows:
        why = f"  ({'; '.join(row['why'])})" if row["why"] else ""
        if row["excluded"]:
            why += f"  [constraints excluded {row['excluded']} settings]"
        if row["upstream_excluded"]:
            why += (
                f"  [{row['upstream_excluded']} (setting, upstream dataset) pairs excluded by "
                "upstream constraints]"
            )
        print(
            f"{row['chain']} run {row['run']} step {row['step']} {row['operation']:<16} "
            f"{row['status']:<10} {row['dir']}{why}"
        )
    return 0


def show_list(plan: Plan) -> int:
    for chain in plan.chains:
        print(f"{chain.spec.name}: {plan.storage / chain.dir}")
        for r, steps in enumerate(chain.runs):
            for i, step in enumerate(steps):
                state = "missing" if step.incomplete else "done"
                print(
                    f"  run {r} step {i + 1} {step.operation.operation.name:<16} {step.dir} ({state})"
                )
    return 0


def show_index(index: Index, *, rebuild: bool) -> int:
    if rebuild:
        print(f"index rebuilt: {index.rebuild()} steps")
        return 0
    counts = {
        kind: len(os.listdir(index.root / kind)) if (index.root / kind).is_dir() else 0
        for kind in ("chains", "steps", "datasets", "names")
    }
    print(f"{index.root}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    return 0


def entrypoint() -> None:
    # `opchain list | head`: a closed pipe ends the command quietly, as for any Unix tool.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main(sys.argv[1:]))
