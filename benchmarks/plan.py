"""Planning and per-step overhead of opchain against a hand-written Snakefile with the same DAG.

Usage: ``python benchmarks/plan.py [--sizes 100,1000,10000] [--repeat 1] [--exec-steps 100]
[--cores 1] [--profile] [--dir /tmp]``

Part 1, planning (``snakemake -n``). For every size, ``size / (ops * runs)`` chains of ``--ops``
(10) operations and ``--runs`` (5) runs are generated in a fresh opchain project: one shared input
summary holding one tiny daf dataset (2x2 float64), and one user operation, ``benchops:touch``,
declared ``random=True`` (so the runs of a chain share no step) that copies its input. Every chain
overrides the operation's ``tag`` parameter with its own number, so no two chains share a
fingerprint: the DAG has exactly ``size`` jobs of rule ``step`` (one per result dataset), plus one
``chain_manifest`` job per chain and ``all``. The ``step`` count is read back from Snakemake's
"Job stats" table and printed.

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
"limit" is the startup floor of any ``snakemake`` command: ``python -m snakemake --version``
(interpreter start and importing Snakemake's CLI), best of 3.

Part 2, execution. A 1-chain x ``--exec-steps`` (100) operations x 1-run opchain chain of the
trivial operation (100 sequential ``step`` jobs, each a ``script:`` job that imports opchain, reads
a daf dataset and writes one atomically with its metadata; plus the chain's ``chain_manifest``
job, a ``run:`` job) against a plain Snakefile of 100 sequential ``script:`` jobs, each a trivial
Python script copying a small text file (``script:`` is the closest analogue of opchain's rule
``step``: Snakemake starts a fresh Python interpreter per job for both). "limit" is 100 sequential
starts of a bare Python interpreter (``python -c pass``), the least 100 ``script:`` jobs can cost.
Per step = total wall time / steps (so it includes the fixed parse and DAG time).

Every number is wall-clock seconds, the best of ``--repeat`` runs (sizes up to 1,000 steps always
best of at least 2). Everything is generated in a temporary directory under ``--dir`` and deleted
at the end. ``--profile`` adds a cProfile of ``plan_from_config`` on the largest project.
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
from pathlib import Path

import numpy as np

from opchain.daf import FilesWriter

REPO = Path(__file__).resolve().parents[1]
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

PLAIN_SNAKEFILE = '''\
# Hand-written peer of opchain's chains: one wildcard rule, {chains} chains x {runs} runs x {ops} steps.
CHAINS = range({chains})
RUNS = range({runs})
OPS = {ops}


def previous(wildcards):
    i = int(wildcards.i)
    return "in.txt" if i == 0 else f"out/{{wildcards.chain}}/{{wildcards.run}}/{{i - 1}}.txt"


rule all:
    input:
        [f"out/{{c}}/{{r}}/{{i}}.txt" for c in CHAINS for r in RUNS for i in range(OPS)],
    default_target: True


rule step:
    input:
        previous,
    output:
        "out/{{chain}}/{{run}}/{{i}}.txt",
    script:
        "step.py"
'''

PLAIN_SCRIPT = '''\
with open(snakemake.input[0]) as source, open(snakemake.output[0], "w") as out:  # noqa: F821
    out.write(source.read())
'''


def write_opchain_project(root: Path, chains: int, ops: int, runs: int) -> None:
    """config/, benchops.py and storage/inputs/d0 (one 2x2 daf dataset) for chains x ops x runs."""
    (root / "config" / "chains").mkdir(parents=True)
    (root / "config" / "operations").mkdir(parents=True)
    (root / "benchops.py").write_text(BENCHOPS, encoding="utf-8")
    (root / "config" / "operations" / "touch.yaml").write_text(
        "type: benchops:touch\nparameters: {tag: 0}\n", encoding="utf-8")
    names = []
    for c in range(chains):
        name = f"config/chains/c{c:05d}.yaml"
        items = "".join(f"  - {{operation_spec: touch.yaml, overridden_params: {{tag: {c}}}}}\n"
                        for _ in range(ops))
        (root / name).write_text(f"input_path: inputs\nruns: {runs}\noperations:\n{items}",
                                 encoding="utf-8")
        names.append(name)
    (root / "config" / "config.yaml").write_text(
        "storage: storage\nchains:\n" + "".join(f"  - {n}\n" for n in names), encoding="utf-8")
    with FilesWriter(root / "storage" / "inputs" / "d0") as out:
        out.create_axis("row", np.array(["r0", "r1"], dtype=object))
        out.create_axis("col", np.array(["c0", "c1"], dtype=object))
        out.set_data2d("row,col#x", np.arange(4.0).reshape(2, 2))


def write_plain_project(root: Path, chains: int, ops: int, runs: int) -> None:
    root.mkdir(parents=True)
    (root / "Snakefile").write_text(PLAIN_SNAKEFILE.format(chains=chains, runs=runs, ops=ops),
                                    encoding="utf-8")
    (root / "step.py").write_text(PLAIN_SCRIPT, encoding="utf-8")
    (root / "in.txt").write_text("0 1\n2 3\n", encoding="utf-8")


def env_for(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPCHAIN_STORAGE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project), env.get("PYTHONPATH")]))
    return env


def run(command: list[str], cwd: Path) -> tuple[float, str]:
    """Wall time of ``command`` and its stdout + stderr; fails loudly on a non-zero exit."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env_for(cwd), text=True, capture_output=True,
                            timeout=TIMEOUT)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n"
                         f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return elapsed, result.stdout + result.stderr


def snakemake(snakefile: Path, project: Path, cores: int, *args: str) -> tuple[float, str]:
    return run([sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(project),
                "--cores", str(cores), "--workflow-profile", "none", *args], project)


def best(repeat: int, fn) -> tuple[float, str]:
    results = [fn() for _ in range(repeat)]
    return min(results, key=lambda r: r[0])


def job_count(output: str, rule: str) -> int:
    """The count of ``rule`` in Snakemake's "Job stats" table."""
    stats = output.split("Job stats:", 1)
    found = re.search(rf"^{rule}\s+(\d+)\s*$", stats[1] if len(stats) > 1 else "", re.MULTILINE)
    if not found:
        raise SystemExit(f"no '{rule}' row in Snakemake's job stats:\n{output[-3000:]}")
    return int(found.group(1))


def reserve(project: Path) -> None:
    """Plan and reserve every directory, as onstart of a real run does, without running jobs."""
    code = ("import yaml; from opchain.plan import plan_from_config; "
            "plan_from_config(yaml.safe_load(open('config/config.yaml')), job_process=False).reserve()")
    run([sys.executable, "-c", code], project)


def profile_plan(project: Path, top: int = 15) -> str:
    code = textwrap.dedent(f"""\
        import cProfile, io, pstats, yaml
        from opchain.plan import plan_from_config
        config = yaml.safe_load(open("config/config.yaml"))
        profiler = cProfile.Profile()
        profiler.enable()
        plan = plan_from_config(config, job_process=False)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats({top})
        print(f"steps {{len(plan.steps)}}, jobs {{len(plan.jobs)}}")
        print(out.getvalue())
        """)
    return run([sys.executable, "-c", code], project)[1]


def planning(sizes: list[int], ops: int, runs: int, repeat: int, cores: int, tmp: Path,
             limit: float) -> Path | None:
    print(f"\nPlanning: snakemake -n --cores {cores}; chains x {ops} operations x {runs} runs; "
          f"seconds, best of {repeat} (at least 2 up to 1,000 steps)")
    header = (f"{'steps':>7} {'chains':>6} {'jobs':>6} {'fresh s':>8} {'reserved s':>10} "
              f"{'plain s':>8} {'limit s':>8} {'fresh/plain':>11} {'resv/plain':>10} "
              f"{'fresh ms/step':>13} {'plain ms/step':>13}")
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
        fresh, out = best(reps, lambda: snakemake(REPO / "Snakefile", ours, cores, "-n"))
        steps = job_count(out, "step")
        reserve(ours)
        reserved, out = best(reps, lambda: snakemake(REPO / "Snakefile", ours, cores, "-n"))
        if job_count(out, "step") != steps:
            raise SystemExit("the reserved plan has a different number of step jobs")
        base, out = best(reps, lambda: snakemake(plain / "Snakefile", plain, cores, "-n"))
        plain_steps = job_count(out, "step")
        if steps != size or plain_steps != size:
            raise SystemExit(f"expected {size} step jobs, got opchain {steps}, plain {plain_steps}")
        print(f"{size:>7} {chains:>6} {steps:>6} {fresh:>8.2f} {reserved:>10.2f} {base:>8.2f} "
              f"{limit:>8.2f} {fresh / base:>10.2f}x {reserved / base:>9.2f}x "
              f"{1000 * fresh / size:>13.3f} {1000 * base / size:>13.3f}", flush=True)
        if largest is not None:
            shutil.rmtree(largest, ignore_errors=True)
        largest = ours
        shutil.rmtree(plain, ignore_errors=True)
    return largest


def execution(steps: int, repeat: int, cores: int, tmp: Path) -> None:
    print(f"\nExecution: one chain of {steps} sequential steps, snakemake --cores {cores}; "
          f"seconds, best of {repeat}")

    def ours_once() -> tuple[float, str]:
        project = tmp / "exec-opchain"
        shutil.rmtree(project, ignore_errors=True)
        write_opchain_project(project, 1, steps, 1)
        return snakemake(REPO / "Snakefile", project, cores)

    def plain_once() -> tuple[float, str]:
        project = tmp / "exec-plain"
        shutil.rmtree(project, ignore_errors=True)
        write_plain_project(project, 1, steps, 1)
        return snakemake(project / "Snakefile", project, cores)

    def limit_once() -> tuple[float, str]:
        start = time.perf_counter()
        for _ in range(steps):
            subprocess.run([sys.executable, "-c", "pass"], check=True)
        return time.perf_counter() - start, ""

    ours, out = best(repeat, ours_once)
    if job_count(out, "step") != steps:
        raise SystemExit(f"opchain ran {job_count(out, 'step')} step jobs, not {steps}")
    plain, out = best(repeat, plain_once)
    if job_count(out, "step") != steps:
        raise SystemExit(f"plain Snakemake ran {job_count(out, 'step')} step jobs, not {steps}")
    limit, _ = best(repeat, limit_once)
    header = (f"{'steps':>6} {'opchain s':>9} {'plain s':>8} {'limit s':>8} {'ratio':>7} "
              f"{'opchain ms/step':>15} {'plain ms/step':>13} {'limit ms/step':>13}")
    print(header)
    print("-" * len(header))
    print(f"{steps:>6} {ours:>9.2f} {plain:>8.2f} {limit:>8.2f} {ours / plain:>6.2f}x "
          f"{1000 * ours / steps:>15.1f} {1000 * plain / steps:>13.1f} {1000 * limit / steps:>13.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000",
                        help="comma-separated step counts for the dry runs (multiples of ops x runs)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per number (the best counts)")
    parser.add_argument("--ops", type=int, default=10, help="operations per chain (dry runs)")
    parser.add_argument("--runs", type=int, default=5, help="runs per chain (dry runs)")
    parser.add_argument("--exec-steps", type=int, default=100,
                        help="steps of the executed chain (0 skips the execution part)")
    parser.add_argument("--cores", type=int, default=1, help="--cores for every snakemake run")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile plan_from_config on the largest project")
    parser.add_argument("--dir", default=None, help="where to generate (deleted afterwards)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    version = subprocess.run([sys.executable, "-m", "snakemake", "--version"], text=True,
                             capture_output=True, check=True).stdout.strip()
    print(f"snakemake {version}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    tmp = Path(tempfile.mkdtemp(prefix="opchain-plan-bench-", dir=args.dir))
    try:
        limit, _ = best(3, lambda: run([sys.executable, "-m", "snakemake", "--version"], tmp))
        largest = planning(sizes, args.ops, args.runs, args.repeat, args.cores, tmp, limit)
        if args.profile and largest is not None:
            shutil.rmtree(largest / "storage" / ".opchain", ignore_errors=True)  # a fresh plan
            print(f"\ncProfile of plan_from_config, fresh index, {largest.name}:")
            print(profile_plan(largest))
        if args.exec_steps:
            execution(args.exec_steps, args.repeat, args.cores, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
