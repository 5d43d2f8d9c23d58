"""Planning and per-step overhead of opchain against a hand-written Snakefile with the same DAG.

Usage: ``python benchmarks/plan.py [--sizes 100,1000,10000] [--repeat 1] [--exec-steps 100]
[--cores 1] [--profile] [--dir /tmp]``

Part 1, planning (``snakemake -n``). For every size, ``size / (ops * runs)`` chains of ``--ops``
(10) operations and ``--runs`` (5) runs are generated in a fresh opchain project: one shared input
summary holding one tiny daf dataset (2x2 float64), and one user operation, ``benchops:touch``,
declared ``random=True`` (so the runs of a chain share no step) that copies its input; it draws no
random numbers, so its jobs never make ``ctx.rng`` (an operation that does pays ~10 ms more per job
for importing numpy.random). Every chain overrides the operation's ``tag`` parameter with its own
number, so no two chains share a fingerprint: every step has one dataset, so the DAG has exactly
``size`` jobs of the operation's rule ``touch`` (one batch of one dataset each), plus one
``chain_manifest`` and one ``chain_report`` job per chain and ``all``. The ``touch`` count is read
back from Snakemake's "Job stats" table and printed.

The peer is a hand-written Snakefile with the same chains: one wildcard rule
``step`` (``out/{chain}/{run}/{i}.txt``, its input the previous step's output, given by an input
function, run by ``script:``) and ``rule all`` asking for every step output. It has no counterpart
of opchain's ``chain_manifest`` jobs (one per chain): they count as opchain's overhead.

Both sides run as real subprocesses, ``python -m snakemake -s SNAKEFILE -d PROJECT -n --cores N
--workflow-profile none`` (identical flags; the project's ``profiles/default`` would set
``cores: all``, ``rerun-incomplete``, ``printshellcmds``, ``show-failed-logs`` and
``latency-wait: 5``, none of which changes a dry run, but it is switched off on both sides).
opchain is timed twice: "fresh" (empty index: every step directory is proposed, the first run of
a project) and "reserved" (the index already holds every fingerprint, as after ``onstart`` of a
real run, and as every later run or cluster job process sees it: planning is index lookups).
Both use the same project: the index is reserved once and moved aside for the fresh runs. The two
"plan s" columns are ``plan_from_config`` alone (fresh, reserved), timed inside an interpreter,
i.e. the part of the dry run that is opchain's own Python rather than Snakemake's. "limit" is the
startup floor of any ``snakemake`` command: ``python -m snakemake --version`` (interpreter start
and importing Snakemake's CLI), best of 3.

Part 2, execution. A 1-chain x ``--exec-steps`` (100) operations x 1-run opchain chain of the
trivial operation (100 sequential ``touch`` jobs, each a ``python -m opchain.run`` shell command
that imports opchain, reads a daf dataset and writes one atomically with its metadata; plus the
chain's ``chain_manifest`` job, a ``script:`` job) against two plain Snakefiles of 100 sequential
``script:`` jobs (Snakemake starts a fresh Python interpreter per job for both sides): one whose
script copies a small text file and imports nothing, the strictest peer, and one whose script
copies the same 2x2 array with ``np.load``/``np.save``, the same work without opchain. opchain also
runs with ``--omit-from chain_manifest`` (the step jobs only), to separate the per-chain manifest
job from the per-step cost. "limit" is 100 sequential starts of a bare Python interpreter
(``python -c pass``), the least 100 jobs can cost. "per step" is the marginal cost of a job: (run
time - dry-run time of the same workflow) / steps, which leaves out parsing, planning and DAG
building; every run starts from a clean project (results, logs and .snakemake removed).
Subprocesses run without ``PYTHONDONTWRITEBYTECODE``, so bytecode caches work as on any machine.

Every number is wall-clock seconds, the best of ``--repeat`` rounds in which the variants are
interleaved, so a load change on the machine hits both sides (sizes up to 1,000 steps: at least 2
rounds). Everything is generated in a temporary directory under ``--dir`` and deleted at the end.
``--profile`` adds a cProfile of ``plan_from_config`` (fresh index) on the largest project.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from opchain.daf import FilesWriter

REPO = Path(__file__).resolve().parents[1]
CELLS = REPO / "storage" / "example_data" / "cells"  # the shipped cells data
TIMEOUT = 1800

BENCHOPS = '''\
"""The benchmark's user operation: a trivial random operation (runs share no step)."""

from opchain import operation


@operation("touch", random=True, parameters={"tag": {"type": "integer", "default": 0}})
def touch(data, params, ctx):
    for axis in data.axis_names():
        ctx.output.create_axis(axis, data.axis_entries(axis))
    ctx.output.set_data2d("row,col#x", data.get_data2d("row,col#x"))
'''

PLAIN_SNAKEFILE = """\
# Hand-written peer of opchain: one wildcard rule, {chains} chains x {runs} runs x {ops} steps.
CHAINS = range({chains})
RUNS = range({runs})
OPS = {ops}


def previous(wildcards):
    i = int(wildcards.i)
    return "in{suffix}" if i == 0 else f"out/{{wildcards.chain}}/{{wildcards.run}}/{{i - 1}}{suffix}"


rule all:
    input:
        [f"out/{{c}}/{{r}}/{{i}}{suffix}" for c in CHAINS for r in RUNS for i in range(OPS)],
    default_target: True


rule step:
    input:
        previous,
    output:
        "out/{{chain}}/{{run}}/{{i}}{suffix}",
    script:
        "step.py"
"""

PLAIN_SCRIPT = """\
with open(snakemake.input[0]) as source, open(snakemake.output[0], "w") as out:  # noqa: F821
    out.write(source.read())
"""

# The same work as the opchain step without opchain: read the array, write it (numpy's import
# included, as in any job that touches array data).
PLAIN_NUMPY_SCRIPT = """\
import numpy as np

np.save(snakemake.output[0], np.load(snakemake.input[0]))  # noqa: F821
"""


def write_opchain_project(root: Path, chains: int, ops: int, runs: int) -> None:
    """config/, benchops.py and storage/inputs/d0 (one 2x2 daf dataset) for chains x ops x runs."""
    (root / "config" / "chains").mkdir(parents=True)
    (root / "config" / "operations").mkdir(parents=True)
    (root / "benchops.py").write_text(BENCHOPS, encoding="utf-8")
    (root / "config" / "operations" / "touch.yaml").write_text(
        "type: benchops:touch\nparameters: {tag: 0}\n", encoding="utf-8"
    )
    names = []
    for c in range(chains):
        name = f"config/chains/c{c:05d}.yaml"
        items = "".join(
            f"  - {{operation_spec: touch.yaml, overridden_params: {{tag: {c}}}}}\n"
            for _ in range(ops)
        )
        (root / name).write_text(
            f"input_path: inputs\nruns: {runs}\noperations:\n{items}", encoding="utf-8"
        )
        names.append(name)
    (root / "config" / "config.yaml").write_text(
        "storage: storage\nchains:\n" + "".join(f"  - {n}\n" for n in names), encoding="utf-8"
    )
    with FilesWriter(root / "storage" / "inputs" / "d0") as out:
        out.create_axis("row", np.array(["r0", "r1"], dtype=object))
        out.create_axis("col", np.array(["c0", "c1"], dtype=object))
        out.set_data2d("row,col#x", np.arange(4.0).reshape(2, 2))


def write_plain_project(root: Path, chains: int, ops: int, runs: int, numpy: bool = False) -> None:
    """The hand-written peer; ``numpy``: its jobs copy an .npy array instead of a text file."""
    root.mkdir(parents=True)
    suffix = ".npy" if numpy else ".txt"
    (root / "Snakefile").write_text(
        PLAIN_SNAKEFILE.format(chains=chains, runs=runs, ops=ops, suffix=suffix), encoding="utf-8"
    )
    (root / "step.py").write_text(PLAIN_NUMPY_SCRIPT if numpy else PLAIN_SCRIPT, encoding="utf-8")
    if numpy:
        np.save(root / "in.npy", np.arange(4.0).reshape(2, 2))
    else:
        (root / "in.txt").write_text("0 1\n2 3\n", encoding="utf-8")


def write_cells_sweep(root: Path, points: int) -> None:
    """A project: one chain (``sweep``) of one normalize step over the shipped cells data with
    ``points`` target_sum values (1000, 1001, ...); written again with more, the grid grows."""
    (root / "config" / "chains").mkdir(parents=True, exist_ok=True)
    (root / "config" / "operations").mkdir(parents=True, exist_ok=True)
    values = ", ".join(str(1000 + v) for v in range(points))
    (root / "config" / "operations" / "normalize.yaml").write_text(
        'type: normalize\nparameter_ranges: {matrix: ["cell,gene#UMIs"], '
        f"target_sum: [{values}]}}\n"
    )
    (root / "config" / "chains" / "sweep.yaml").write_text(
        "input_path: example_data/cells\noperations: [normalize.yaml]\n"
    )
    (root / "config" / "config.yaml").write_text(
        "storage: storage\nchains: [config/chains/sweep.yaml]\n"
    )
    if not (root / "storage").exists():
        shutil.copytree(CELLS, root / "storage" / "example_data" / "cells")


def env_for(project: Path) -> dict[str, str]:
    # Bytecode caches as on any machine: without them every job would recompile opchain's source.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPCHAIN_STORAGE", "PYTHONDONTWRITEBYTECODE")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project), env.get("PYTHONPATH")]))
    return env


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall time of ``command`` (in ``env``, else :func:`env_for` ``cwd``) and its stdout +
    stderr; fails loudly on a non-zero exit."""
    start = time.perf_counter()
    result = subprocess.run(
        command, cwd=cwd, env=env or env_for(cwd), text=True, capture_output=True, timeout=TIMEOUT
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(
            f"failed ({result.returncode}): {' '.join(command)}\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return elapsed, result.stdout + result.stderr


def snakemake(
    snakefile: Path, project: Path, cores: int, *args: str, python: str = sys.executable
) -> tuple[float, str]:
    return run(
        [
            python,
            "-m",
            "snakemake",
            "-s",
            str(snakefile),
            "-d",
            str(project),
            "--cores",
            str(cores),
            "--workflow-profile",
            "none",
            *args,
        ],
        project,
    )


def rounds(
    repeat: int,
    variants: dict[str, Callable[[], tuple[float, str]]],
) -> dict[str, tuple[float, str]]:
    """The best (time, output) of each variant over ``repeat`` rounds, the variants interleaved in
    every round (the machine's load drifts; interleaving spreads it over both sides)."""
    found: dict[str, tuple[float, str]] = {}
    for _ in range(repeat):
        for name, fn in variants.items():
            result = fn()
            if name not in found or result[0] < found[name][0]:
                found[name] = result
    return found


def job_count(output: str, rule: str) -> int:
    """The count of ``rule`` in Snakemake's "Job stats" table."""
    stats = output.split("Job stats:", 1)
    found = re.search(rf"^{rule}\s+(\d+)\s*$", stats[1] if len(stats) > 1 else "", re.MULTILINE)
    if not found:
        raise SystemExit(f"no '{rule}' row in Snakemake's job stats:\n{output[-3000:]}")
    return int(found.group(1))


PLAN_CODE = """\
import sys, time, yaml
from opchain.plan import plan_from_config
config = yaml.safe_load(open("config/config.yaml"))
start = time.perf_counter()
plan = plan_from_config(config)
print(f"plan_seconds {time.perf_counter() - start:.6f} steps {len(plan.steps)}")
if sys.argv[1:] == ["reserve"]:
    plan.reserve()
"""


def plan_seconds(project: Path, *args: str) -> float:
    """plan_from_config alone, timed inside a fresh interpreter (``reserve``: then reserve it)."""
    out = run([sys.executable, "-c", PLAN_CODE, *args], project)[1]
    return float(re.search(r"plan_seconds (\S+)", out).group(1))


class IndexAside:
    """The project's index moved away for the duration: planning sees a fresh project."""

    def __init__(self, project: Path) -> None:
        self.index = project / "storage" / ".opchain"
        self.aside = project / "storage" / ".opchain-aside"

    def __enter__(self) -> None:
        self.index.rename(self.aside)

    def __exit__(self, *exc: object) -> None:
        self.aside.rename(self.index)


def profile_plan(project: Path, top: int = 15) -> str:
    code = textwrap.dedent(f"""\
        import cProfile, io, pstats, yaml
        from opchain.plan import plan_from_config
        config = yaml.safe_load(open("config/config.yaml"))
        profiler = cProfile.Profile()
        profiler.enable()
        plan = plan_from_config(config)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats({top})
        print(f"steps {{len(plan.steps)}}")
        print(out.getvalue().strip())
        """)
    with IndexAside(project):
        return run([sys.executable, "-c", code], project)[1]


def dry_runs(ours: Path, plain: Path, cores: int) -> dict[str, Callable[[], tuple[float, str]]]:
    def fresh() -> tuple[float, str]:
        with IndexAside(ours):
            return snakemake(REPO / "Snakefile", ours, cores, "-n")

    return {
        "fresh": fresh,
        "reserved": lambda: snakemake(REPO / "Snakefile", ours, cores, "-n"),
        "plain": lambda: snakemake(plain / "Snakefile", plain, cores, "-n"),
    }


def planning(
    sizes: list[int], ops: int, runs: int, repeat: int, cores: int, tmp: Path, limit: float
) -> Path | None:
    print(
        f"\nPlanning: snakemake -n --cores {cores}, chains x {ops} operations x {runs} runs; "
        f"seconds, best of {repeat} interleaved rounds (at least 2 up to 1,000 steps)"
    )
    header = (
        f"{'steps':>6} {'chains':>6} {'step jobs':>9} | {'fresh s':>7} {'plan s':>6} | "
        f"{'resv s':>6} {'plan s':>6} | {'plain s':>7} {'limit s':>7} | {'fresh/plain':>11} "
        f"{'resv/plain':>10} | {'ms/step fresh':>13} {'resv':>6} {'plain':>6}"
    )
    print(header)
    print("-" * len(header))
    largest = None
    for size in sizes:
        if size % (ops * runs):
            raise SystemExit(f"size {size} is not a multiple of ops x runs = {ops * runs}")
        chains = size // (ops * runs)
        reps = max(repeat, 2) if size <= 1000 else repeat
        ours, plain = tmp / f"opchain-{size}", tmp / f"plain-{size}"
        write_opchain_project(ours, chains, ops, runs)
        write_plain_project(plain, chains, ops, runs)
        plan_seconds(ours, "reserve")  # fills the index, once
        with IndexAside(ours):
            fresh_plan = min(plan_seconds(ours) for _ in range(reps))
        resv_plan = min(plan_seconds(ours) for _ in range(reps))
        found = rounds(reps, dry_runs(ours, plain, cores))
        counts = {
            name: job_count(out, "touch" if name != "plain" else "step")
            for name, (_, out) in found.items()
        }
        if set(counts.values()) != {size}:
            raise SystemExit(f"expected {size} step jobs everywhere, got {counts}")
        f, r, p = (found[name][0] for name in ("fresh", "reserved", "plain"))
        print(
            f"{size:>6} {chains:>6} {counts['fresh']:>9} | {f:>7.2f} {fresh_plan:>6.2f} | "
            f"{r:>6.2f} {resv_plan:>6.2f} | {p:>7.2f} {limit:>7.2f} | {f / p:>10.2f}x "
            f"{r / p:>9.2f}x | {1000 * f / size:>13.2f} {1000 * r / size:>6.2f} "
            f"{1000 * p / size:>6.2f}",
            flush=True,
        )
        if largest is not None:
            shutil.rmtree(largest, ignore_errors=True)
        largest = ours
        shutil.rmtree(plain, ignore_errors=True)
    return largest


def execution(steps: int, repeat: int, cores: int, tmp: Path) -> None:
    print(
        f"\nExecution: one chain of {steps} sequential steps of a trivial operation, "
        f"snakemake --cores {cores}; seconds, best of {repeat} interleaved rounds"
    )
    ours, plain, plain_np = tmp / "exec-opchain", tmp / "exec-plain", tmp / "exec-plain-numpy"
    write_opchain_project(ours, 1, steps, 1)
    write_plain_project(plain, 1, steps, 1)
    write_plain_project(plain_np, 1, steps, 1, numpy=True)
    ours_snakefile, plain_snakefile = REPO / "Snakefile", plain / "Snakefile"

    def clean_run(project: Path, snakefile: Path, results: str, *args: str) -> tuple[float, str]:
        shutil.rmtree(project / results, ignore_errors=True)
        shutil.rmtree(project / "logs", ignore_errors=True)
        shutil.rmtree(project / ".snakemake", ignore_errors=True)
        return snakemake(snakefile, project, cores, *args)

    def limit_once() -> tuple[float, str]:
        start = time.perf_counter()
        for _ in range(steps):
            subprocess.run([sys.executable, "-c", "pass"], check=True)
        return time.perf_counter() - start, ""

    found = rounds(
        repeat,
        {
            "opchain dry": lambda: snakemake(ours_snakefile, ours, cores, "-n"),
            "plain dry": lambda: snakemake(plain_snakefile, plain, cores, "-n"),
            "opchain": lambda: clean_run(ours, ours_snakefile, "storage/operation_chain_results"),
            "opchain steps": lambda: clean_run(
                ours,
                ours_snakefile,
                "storage/operation_chain_results",
                "--omit-from",
                "chain_manifest",
            ),
            "plain": lambda: clean_run(plain, plain_snakefile, "out"),
            "plain numpy dry": lambda: snakemake(plain_np / "Snakefile", plain_np, cores, "-n"),
            "plain numpy": lambda: clean_run(plain_np, plain_np / "Snakefile", "out"),
            "limit": limit_once,
        },
    )
    for name in ("opchain", "opchain steps", "plain", "plain numpy"):
        rule = "touch" if name.startswith("opchain") else "step"
        if job_count(found[name][1], rule) != steps:
            raise SystemExit(f"{name} ran {job_count(found[name][1], rule)} jobs, not {steps}")
    dry = {
        "opchain": found["opchain dry"][0],
        "opchain steps": found["opchain dry"][0],
        "plain": found["plain dry"][0],
        "plain numpy": found["plain numpy dry"][0],
    }

    def per_step(name: str) -> float:
        return (found[name][0] - dry[name]) / steps

    header = (
        f"{'':<44} {'run s':>7} {'dry-run s':>9} {'per step ms':>11} {'run ratio':>9} "
        f"{'per-step ratio':>14} {'vs numpy peer':>13}"
    )
    print(header)
    print("-" * len(header))
    rows = [
        ("opchain (steps + chain.yaml)", "opchain"),
        ("opchain --omit-from chain_manifest", "opchain steps"),
        ("plain Snakemake (script:, text copy)", "plain"),
        ("plain Snakemake (script:, numpy load/save)", "plain numpy"),
    ]
    for label, name in rows:
        total = found[name][0]
        print(
            f"{label:<44} {total:>7.2f} {dry[name]:>9.2f} {1000 * per_step(name):>11.0f} "
            f"{total / found['plain'][0]:>8.2f}x {per_step(name) / per_step('plain'):>13.2f}x "
            f"{per_step(name) / per_step('plain numpy'):>12.2f}x"
        )
    limit = found["limit"][0]
    print(
        f"{'limit: ' + str(steps) + ' x python -c pass':<44} {limit:>7.2f} {'':>9} "
        f"{1000 * limit / steps:>11.0f}"
    )
    print(
        "per step = (run - dry run of the same workflow) / steps: a job's marginal cost without "
        "parsing and DAG building;\n--omit-from chain_manifest leaves out the chain's "
        "chain_manifest job (one script: job writing chain.yaml)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        default="100,1000,10000",
        help="comma-separated step counts for the dry runs (multiples of ops x runs)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per number (the best counts)")
    parser.add_argument("--ops", type=int, default=10, help="operations per chain (dry runs)")
    parser.add_argument("--runs", type=int, default=5, help="runs per chain (dry runs)")
    parser.add_argument(
        "--exec-steps",
        type=int,
        default=100,
        help="steps of the executed chain (0 skips the execution part)",
    )
    parser.add_argument("--cores", type=int, default=1, help="--cores for every snakemake run")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile plan_from_config on the largest project"
    )
    parser.add_argument("--dir", default=None, help="where to generate (deleted afterwards)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    version = subprocess.run(
        [sys.executable, "-m", "snakemake", "--version"], text=True, capture_output=True, check=True
    ).stdout.strip()
    print(f"snakemake {version}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    tmp = Path(tempfile.mkdtemp(prefix="opchain-plan-bench-", dir=args.dir))
    try:
        limit = rounds(
            3, {"limit": lambda: run([sys.executable, "-m", "snakemake", "--version"], tmp)}
        )["limit"][0]
        largest = planning(sizes, args.ops, args.runs, args.repeat, args.cores, tmp, limit)
        if args.profile and largest is not None:
            print(f"\ncProfile of plan_from_config, fresh index, {largest.name}:")
            print(profile_plan(largest))
        if args.exec_steps:
            execution(args.exec_steps, args.repeat, args.cores, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
