"""A parameter sweep beside DVC: first run, no-op rerun, grid grown by one point, list every point.

Usage: ``python benchmarks/dvc.py [--sizes 20,200] [--quick] [--rounds 2] [--dir /tmp]
[--venv ~/.cache/opchain-bench/dvc-venv] [--dvc-spec "dvc==3.67.*"]
[--opchain-venv ~/.cache/opchain-bench/opchain-venv]``

The work is the built-in ``normalize`` over the shipped cells data (``storage/example_data/cells``:
one dataset, ``cell,gene#UMIs``), swept over N values of its ``target_sum`` (1000, 2000, ...), so N
result datasets; N = 20 and 200 by default (``--sizes``; ``--quick`` is N = 3, one round, a smoke
test). Both tools run serially on the same machine in the same run:

- **opchain**: a temporary project (``config/config.yaml``, a chain of one step whose operation
  file has ``parameter_ranges: {target_sum: [...]}``, the cells data under the storage root), run
  with ``python -m snakemake -s <repo>/Snakefile -d PROJECT --cores 1 --workflow-profile none``
  (the flags of benchmarks/plan.py), i.e. everything a user's ``snakemake --cores 1`` does: the
  batch jobs, the chain's tables and its report. Installed as the README's first command
  installs it (``pip install -e .``: no SLURM plugin, whose import Snakemake would pay at every
  start) into a venv of its own (``--opchain-venv``, made once, editable: it runs this
  checkout; ``--opchain-venv ""``: this interpreter, whatever it has installed).
- **DVC** (3.67, what a user would pick for stale-only reruns of a sweep), installed by this script
  into its own venv (``--venv``, reused when present; never a project dependency): a ``git init`` +
  ``dvc init`` repository holding the same cells data and a ``dvc.yaml`` with one stage whose
  ``matrix:`` lists the same N values; its ``cmd`` runs ``point.py VALUE`` with this interpreter,
  which calls opchain's own normalize function on the same input and writes the same daf dataset to
  ``out/VALUE`` (the stage's ``outs``, cached by DVC as it does by default) and
  ``metrics/VALUE.json`` (``{"target_sum": VALUE}``, a ``metrics:`` file, not cached: normalize has
  no score, so what lists the points is their parameters and outputs). ``dvc repro``.

Per size, each round builds both projects afresh and times, the tools interleaved: the first run;
the no-op rerun (twice); the grid grown by one point (the value list edited: the operation file's
``parameter_ranges``, the ``matrix:``), then rerun; listing every point (twice): ``opchain results``
(the chain's results table: every dataset's parameters and output) and ``dvc metrics show`` (every
point's metrics file). Each cell is wall-clock seconds of a subprocess, the best over ``--rounds``
rounds (and repeats); ratio = DVC / opchain, above 1 means opchain is faster. "limit" is the
physical limit of the line: the same normalize of the same input into the same kind of dataset,
N times (first run) or once (growth), in this process, with no tool around it (after one warm-up
point: imports are not the work); a no-op rerun and a listing have no work, so their limit is the
start-up of a Python interpreter (``python -c pass``). Limits and start-ups are measured in every
round too, best kept. After each size's first run, the two tools' datasets of its first point are
compared file by file: they must be byte-identical (the same work).

Below the table, opchain's time split where it is cheap to see: ``python -m snakemake --version``
(Snakemake's start-up), ``snakemake -n`` (start-up + planning) in each state (fresh project, after
the run, after the grid grew), so run - dry run is the jobs, tables and report; likewise ``dvc
--version`` and ``dvc status`` (DVC's start-up and its staleness check). The load average is
printed with the numbers: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from plan import CELLS, REPO, env_for, run, snakemake

import opchain

MATRIX = "cell,gene#UMIs"
TIMEOUT = 3600

POINT_SCRIPT = '''\
"""One point of the DVC sweep: opchain's normalize of the cells data, target_sum = argv[1]."""

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, {src!r})

from opchain.daf import FilesWriter, open_reader  # noqa: E402
from opchain.datastore import DataStore  # noqa: E402
from opchain.operations import Context, get_operation  # noqa: E402

value = float(sys.argv[1])
normalize = get_operation("normalize")
data = open_reader("data/cells/daf_example")
writer = FilesWriter(Path("out") / sys.argv[1])  # atomic: written aside, renamed when complete
context = Context(writer, DataStore(), logging.getLogger("point"), None, False)
normalize.function(data, {{"matrix": {matrix!r}, "target_sum": value}}, context)
writer.close()
Path("metrics").mkdir(exist_ok=True)
Path("metrics", sys.argv[1] + ".json").write_text(json.dumps({{"target_sum": value}}))
'''


def values(n: int) -> list[int]:
    return [1000 * (k + 1) for k in range(n)]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def dvc_venv(venv: Path, spec: str) -> Path:
    """The venv's ``dvc`` executable, the venv made and DVC installed into it when missing."""
    dvc = venv / "bin" / "dvc"
    if dvc.exists() and subprocess.run([dvc, "--version"], capture_output=True).returncode == 0:
        return dvc
    print(f"installing {spec} into {venv} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
    for wanted in (spec, "dvc>=3,<4"):  # the closest 3.x when the pinned one is not available
        pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet", wanted]
        if subprocess.run(pip).returncode == 0:
            return dvc
    raise SystemExit(f"could not install DVC into {venv}")


def dvc_env(repo: Path) -> dict[str, str]:
    env = env_for(repo)
    env["DVC_NO_ANALYTICS"] = "1"  # no network call to DVC's telemetry on every command
    env["DVC_SITE_CACHE_DIR"] = str(repo / ".dvc-site-cache")  # no state shared between repos
    return env


class Dvc:
    """A git + DVC repository of the sweep: the cells data, point.py, dvc.yaml with a matrix."""

    def __init__(self, root: Path, dvc: Path, n: int) -> None:
        self.root, self.dvc = root, dvc
        shutil.copytree(CELLS, root / "data" / "cells")
        (root / "point.py").write_text(
            POINT_SCRIPT.format(src=str(Path(opchain.__file__).parents[1]), matrix=MATRIX)
        )
        self.git("init", "-q")
        self.git("config", "user.name", "bench")
        self.git("config", "user.email", "bench@example.invalid")
        self.command("init", "-q")
        self.command("config", "core.analytics", "false")
        self.write(n)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "sweep")

    def git(self, *args: str) -> None:
        subprocess.run(["git", *args], cwd=self.root, check=True, capture_output=True)

    def command(self, *args: str) -> tuple[float, str]:
        return run([str(self.dvc), *args], self.root, dvc_env(self.root))

    def write(self, n: int) -> None:
        points = ", ".join(str(v) for v in values(n))
        (self.root / "dvc.yaml").write_text(
            "stages:\n"
            "  normalize:\n"
            "    matrix:\n"
            f"      target_sum: [{points}]\n"
            f"    cmd: {sys.executable} point.py ${{item.target_sum}}\n"
            "    deps:\n"
            "      - point.py\n"
            "      - data/cells\n"
            "    outs:\n"
            "      - out/${item.target_sum}\n"
            "    metrics:\n"
            "      - metrics/${item.target_sum}.json:\n"
            "          cache: false\n"
        )

    def run(self) -> tuple[float, str]:
        return self.command("repro", "-q")

    def count(self) -> int:
        return sum(p.is_dir() for p in (self.root / "out").iterdir())  # beside it: .gitignore


# opchain


def opchain_venv(venv: Path) -> str:
    """The venv's interpreter, with this checkout installed as a user installs it (made once)."""
    python = venv / "bin" / "python"
    check = [python, "-c", "import opchain; print(opchain.__file__)"]
    found = subprocess.run(check, capture_output=True, text=True) if python.exists() else None
    if found is None or not found.stdout.startswith(str(REPO)):
        print(f"installing opchain (pip install -e {REPO}) into {venv} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
        pip = [python, "-m", "pip", "install", "--quiet", "-e", str(REPO)]
        subprocess.run(pip, check=True)
    return str(python)


PYTHON = sys.executable  # opchain's interpreter (see opchain_venv)


class Opchain:
    """An opchain project of the sweep: one chain, one step, parameter_ranges of N values."""

    def __init__(self, root: Path, n: int) -> None:
        self.root = root
        (root / "config" / "chains").mkdir(parents=True)
        (root / "config" / "operations").mkdir(parents=True)
        (root / "config" / "config.yaml").write_text(
            "storage: storage\nchains: [config/chains/sweep.yaml]\n"
        )
        (root / "config" / "chains" / "sweep.yaml").write_text(
            "input_path: cells\noperations: [normalize.yaml]\n"
        )
        shutil.copytree(CELLS, root / "storage" / "cells")
        self.write(n)

    def write(self, n: int) -> None:
        points = ", ".join(str(v) for v in values(n))
        (self.root / "config" / "operations" / "normalize.yaml").write_text(
            f'type: normalize\nparameter_ranges: {{matrix: ["{MATRIX}"], target_sum: [{points}]}}\n'
        )

    def snakemake(self, *args: str) -> tuple[float, str]:
        return snakemake(REPO / "Snakefile", self.root, 1, *args, python=PYTHON)

    def run(self) -> tuple[float, str]:
        return self.snakemake()

    def results(self) -> tuple[float, str]:
        return run([PYTHON, "-m", "opchain", "results", "sweep"], self.root)

    def count(self) -> int:
        # The largest step directory: each grid the step had is a directory of its own.
        steps = (self.root / "storage" / "operation_chain_results").glob("*/*/")
        return max(len(list(step.glob("dataset_*"))) for step in steps)

    def dataset(self, target_sum: int) -> Path:
        """The result dataset of the point ``target_sum``."""
        results = self.root / "storage" / "operation_chain_results"
        for metadata in results.glob("*/*/dataset_*/metadata.yaml"):
            if yaml.safe_load(metadata.read_text())["parameters"]["target_sum"] == target_sum:
                return metadata.parent
        raise SystemExit(f"no opchain result of target_sum {target_sum}")


def same_work(o: Opchain, d: Dvc, target_sum: int) -> None:
    """Both tools wrote the same dataset for the point: every daf file byte for byte."""
    ours, theirs = o.dataset(target_sum), d.root / "out" / str(target_sum)
    files = sorted(p.name for p in theirs.iterdir())
    for name in files:
        if (ours / name).read_bytes() != (theirs / name).read_bytes():
            raise SystemExit(f"{ours / name} and {theirs / name} differ")


# the physical limit


def limit_seconds(folder: Path, n: int) -> float:
    """N normalize points of the cells data in this process: read, compute, write atomically."""
    import logging

    from opchain.daf import FilesWriter, open_reader
    from opchain.datastore import DataStore
    from opchain.operations import Context, get_operation

    normalize = get_operation("normalize")
    folder.mkdir()
    start = 0.0
    for k, v in enumerate([0, *values(n)]):  # point 0 warms up: the imports are not the work
        if k == 1:
            start = time.perf_counter()
        data = open_reader(CELLS / "daf_example")
        writer = FilesWriter(folder / str(v))
        context = Context(writer, DataStore(), logging.getLogger("limit"), None, False)
        normalize.function(data, {"matrix": MATRIX, "target_sum": float(v or 1)}, context)
        writer.close()
    seconds = time.perf_counter() - start
    shutil.rmtree(folder)
    return seconds


LINES = ("first run", "no-op rerun", "grid grown by one point", "list every point")


def best(table: dict[str, float], key: str, seconds: float) -> None:
    table[key] = min(table.get(key, seconds), seconds)


def one_size(args: argparse.Namespace, dvc: Path, tmp: Path, n: int) -> None:
    ours: dict[str, float] = {}
    theirs: dict[str, float] = {}
    parts: dict[str, float] = {}
    loads = [load()]
    for r in range(args.rounds):
        o = Opchain(tmp / f"opchain-{n}-{r}", n)
        d = Dvc(tmp / f"dvc-{n}-{r}", dvc, n)
        best(parts, "opchain -n, fresh", o.snakemake("-n")[0])
        best(parts, "dvc status, fresh", d.command("status")[0])
        # Interleaved: opchain first in even rounds, DVC first in odd ones.
        order: list[tuple[dict[str, float], Callable[[], tuple[float, str]]]] = [
            (ours, o.run),
            (theirs, d.run),
        ]
        if r % 2:
            order.reverse()
        for table, first_run in order:
            best(table, LINES[0], first_run()[0])
        assert o.count() == n and d.count() == n, (o.count(), d.count())
        same_work(o, d, values(n)[0])
        best(parts, "opchain -n, done", o.snakemake("-n")[0])
        best(parts, "dvc status, done", d.command("status")[0])
        for _ in range(2):
            for table, rerun in order:
                best(table, LINES[1], rerun()[0])
        o.write(n + 1)
        d.write(n + 1)
        best(parts, "opchain -n, grown", o.snakemake("-n")[0])
        best(parts, "dvc status, grown", d.command("status")[0])
        for table, grown in order:
            best(table, LINES[2], grown()[0])
        assert o.count() == n + 1 and d.count() == n + 1, (o.count(), d.count())
        listings: list[tuple[dict[str, float], Callable[[], tuple[float, str]]]] = [
            (ours, o.results),
            (theirs, lambda d=d: d.command("metrics", "show")),
        ]
        for _ in range(2):
            for table, listing in listings:
                seconds, out = listing()
                best(table, LINES[3], seconds)
                assert str(values(n + 1)[-1]) in out.replace(",", ""), out[-2000:]
        shutil.rmtree(o.root)
        shutil.rmtree(d.root)
        # The limits and start-ups in every round too: the best of them, like the tools'.
        best(parts, "limit, N points", limit_seconds(tmp / "limit", n))
        best(parts, "limit, 1 point", limit_seconds(tmp / "limit", 1))
        for name, command in (
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("snakemake --version", [PYTHON, "-m", "snakemake", "--version"]),
            ("dvc --version", [str(dvc), "--version"]),
        ):
            best(parts, name, run(command, tmp)[0])
        loads.append(load())
    limits = {LINES[0]: parts["limit, N points"], LINES[2]: parts["limit, 1 point"]}
    limits[LINES[1]] = limits[LINES[3]] = parts["python -c pass"]
    print(f"\nN = {n} points, best of {args.rounds} round(s); load average (1, 5, 15 min) "
          f"{' -> '.join(loads)}")  # fmt: skip
    print("| line | opchain s | DVC s | DVC / opchain | limit s | opchain / limit |")
    print("|---|---|---|---|---|---|")
    for line in LINES:
        a, b, lim = ours[line], theirs[line], limits[line]
        print(f"| {line} | {a:.2f} | {b:.2f} | {b / a:.2f} | {lim:.3f} | {a / lim:.1f} |")
    print("limit: the normalize work in this process (N points; 1 point when grown), "
          "`python -c pass` for a no-op rerun and a listing")  # fmt: skip
    print("\nWhere the time goes (best of the rounds, seconds):")
    print("| | opchain (snakemake) | DVC |")
    print("|---|---|---|")
    print(f"| start-up (`--version`) | {parts['snakemake --version']:.2f} | "
          f"{parts['dvc --version']:.2f} |")  # fmt: skip
    for state, line in (("fresh", LINES[0]), ("done", LINES[1]), ("grown", LINES[2])):
        dry, status = parts[f"opchain -n, {state}"], parts[f"dvc status, {state}"]
        print(f"| dry run (`snakemake -n` / `dvc status`), {state} | {dry:.2f} | {status:.2f} |")
        if state != "done":
            print(f"| {line} - dry run: jobs, tables, report | {ours[line] - dry:.2f} | "
                  f"{theirs[line] - status:.2f} |")  # fmt: skip
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20,200", help="sweep sizes N, comma-separated")
    parser.add_argument("--quick", action="store_true", help="N = 3, one round: a smoke test")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", default=None, help="where the temporary projects go")
    parser.add_argument(
        "--venv", default=str(Path.home() / ".cache" / "opchain-bench" / "dvc-venv")
    )
    parser.add_argument("--dvc-spec", default="dvc==3.67.*")
    parser.add_argument(
        "--opchain-venv", default=str(Path.home() / ".cache" / "opchain-bench" / "opchain-venv")
    )
    args = parser.parse_args()
    global PYTHON
    if args.opchain_venv:
        PYTHON = opchain_venv(Path(args.opchain_venv))
    sizes = [3] if args.quick else [int(s) for s in args.sizes.split(",")]
    if args.quick:
        args.rounds = 1
    dvc = dvc_venv(Path(args.venv), args.dvc_spec)
    version = subprocess.run([dvc, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"DVC {version} ({dvc}); opchain {opchain.__version__} ({PYTHON}); "
          f"{os.cpu_count()} cores; load average {load()}")  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="opchain-dvc-", dir=args.dir))
    try:
        for n in sizes:
            one_size(args, dvc, tmp, n)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
