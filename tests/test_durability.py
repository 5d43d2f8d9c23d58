"""Results that survive a host crash and bit rot, through real `snakemake` runs: every dataset,
index entry and table is flushed to stable storage before the rename that publishes it and its
directory after (seen in an strace of a real run); `opchain verify` finds every kind of damage
and `--remove-damaged` makes the next run recompute exactly the damaged results, byte for byte; a
full disk or a read-only storage root is one line, and leaves nothing partial.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import Project, make_project, write_matrix
from slurm_cluster import ensure_packages
from test_batches import grid_project

from opchain.reuse import OWN_FILES

TRACED = "fsync,fdatasync,syncfs,rename,renameat,renameat2,link,linkat"


def strace(project: Project, *args: str) -> list[tuple[int, str, list[str]]]:
    """Run snakemake under ``strace -f`` (installed from Debian's package when missing): the
    successful flushes, renames and links of every process, in the order they completed, as
    (pid, call, absolute paths)."""
    ensure_packages(["strace"], lambda: shutil.which("strace") is not None)
    trace = project.root / "strace.txt"
    command = ["strace", "-f", "-qq", "-y", "-s", "4096", "-e", f"trace={TRACED}",
               "-e", "signal=none", "-o", str(trace), *project.snakemake_command(*args)]  # fmt: skip
    subprocess.run(command, cwd=project.root, env=project.env(), check=True, capture_output=True)
    return parse_strace(trace.read_text(), project.root)


def parse_strace(text: str, cwd: Path) -> list[tuple[int, str, list[str]]]:
    events, pending = [], {}
    for line in text.splitlines():
        pid, _, call = line.partition(" ")
        call = call.strip()
        if call.endswith("<unfinished ...>"):
            pending[pid] = call.removesuffix("<unfinished ...>")
            continue
        resumed = re.match(r"<\.\.\. \w+ resumed>(.*)", call)
        if resumed:
            call = pending.pop(pid) + resumed.group(1)
        found = re.match(r"(\w+)\((.*)\)\s+= (-?\d+)", call)
        if found and found.group(3) == "0":
            # Paths: an fd's (-y: <path>) or quoted (relative to the job's directory).
            paths = re.findall(r'(?<=<)(/[^>]*)(?=>)|"([^"]*)"', found.group(2))
            absolute = [a or os.path.join(cwd, q) for a, q in paths if a or q]
            if found.group(1).startswith(("rename", "link")):
                absolute = [p for p in absolute if p != str(cwd)]  # AT_FDCWD</cwd>
            events.append((int(pid), found.group(1), [os.path.normpath(p) for p in absolute]))
    return events


def publications(events: list, storage: Path) -> Iterator[tuple[int, str, str, str]]:
    """(position, process, temporary, final) of every rename or link into the storage root (not
    the links that build a reused dataset in its temporary directory)."""
    for position, (pid, call, paths) in enumerate(events):
        final = paths[-1] if paths else ""
        into = final.startswith(f"{storage}/") and ".tmp-" not in final
        if call.startswith(("rename", "link")) and into:
            yield position, pid, paths[0], final


def window(events: list, position: int, pid: int) -> list:
    """The events after the rename at ``position`` up to the next one by the same process that
    follows a flush: what the process did before it published anything else (renames right
    after it, with no flush between, are published with it)."""
    end, flushed = len(events), False
    for later in range(position + 1, len(events)):
        flushed = flushed or events[later][1] == "fsync"
        if flushed and events[later][0] == pid and events[later][1].startswith(("rename", "link")):
            end = later
            break
    return events[position + 1 : end]


def test_a_run_flushes_every_dataset_before_its_rename_and_its_directory_after(
    tmp_path: Path,
) -> None:
    project = grid_project(tmp_path / "p", [1])
    project.snakemake()
    project.edit(
        "config/operations/grid.yaml", "type: myops:add\nparameter_ranges: {value: [1, 2]}\n"
    )
    # One job at a time: a flush seen between two renames of a job is that job's.
    events = strace(project, "--cores", "1")  # 4 new datasets a step: 2 linked, 2 computed
    storage = Path(os.path.realpath(project.storage))
    flushed: set[str] = set()
    datasets = linked = 0
    computed = []  # (position, process) of each computed dataset's rename
    for position, pid, temporary, final in publications(events, storage):
        before = {p for _, call, paths in events[:position] if call == "fsync" for p in paths}
        if re.fullmatch(r"dataset_\d+", os.path.basename(final)):
            datasets += 1
            meta = yaml.safe_load(Path(final, "metadata.yaml").read_text())
            reused = "computed_in" in meta
            linked += reused
            computed += [] if reused else [(position, pid)]
            # A reused dataset's hard links share the data of files flushed when they were first
            # published: its directories and its own two files are what is new. So do the files
            # a computed dataset carries unchanged from its input (hard links of the input's).
            carried = {os.stat(p).st_ino for p in (storage / meta["input"]).iterdir()}
            tree = [os.path.join(temporary, os.path.relpath(os.path.join(folder, name), final))
                    for folder, dirs, files in os.walk(final) for name in (*dirs, *files)
                    if name in dirs or name in OWN_FILES or (not reused
                    and os.stat(os.path.join(folder, name)).st_ino not in carried)]  # fmt: skip
            assert {temporary, *tree} <= before, f"{final}: published before all was flushed"
        else:  # an index entry, a name claim, chain.yaml, results.csv, a history version
            assert temporary in before, f"{final}: published before it was flushed"
        flushes = [paths for _, call, paths in window(events, position, pid) if call == "fsync"]
        assert [os.path.dirname(final)] in flushes, f"{final}: its directory was not flushed"
        flushed.add(final)
    assert datasets == 8 and linked == 4
    # A step's job publishes the two datasets it computed (within half a second) together: one
    # round of flushes before their renames and one after, not two rounds each.
    for (first, pid), (second, other) in zip(computed[::2], computed[1::2], strict=True):
        assert pid == other and not [e for e in events[first:second] if e[1] == "fsync"]
    assert any("/.opchain/datasets/" in f for f in flushed)  # where each point was computed
    assert any("/.opchain/names/" in f for f in flushed)  # the new steps' name claims
    assert {os.path.basename(f) for f in flushed} >= {"chain.yaml", "results.csv"}
    # A linked dataset carries the digests of the files it links.
    step = project.storage / project.manifest()["runs"][0]["steps"][0]["dir"]
    for dataset in step.glob("dataset_*"):
        meta = yaml.safe_load((dataset / "metadata.yaml").read_text())
        if "computed_in" in meta:
            source = yaml.safe_load(
                (project.storage / meta["computed_in"] / "metadata.yaml").read_text()
            )
            own = ("metadata.yaml", "input_metadata.yaml")
            assert {k: v for k, v in meta["xxh3_128"].items() if k not in own} == {
                k: v for k, v in source["xxh3_128"].items() if k not in own
            }
    assert project.opchain("verify").returncode == 0


def test_durable_false_flushes_nothing(project: Project) -> None:
    """For scratch storage: the config's `durable: false` reaches the jobs and the tables."""
    project.edit(
        "config/config.yaml",
        "storage: storage\ndurable: false\nchains: [config/chains/basic.yaml]\n",
    )
    events = strace(project)
    storage = Path(os.path.realpath(project.storage))
    assert len(list(publications(events, storage))) > 10  # it did publish datasets and tables
    assert [e for e in events if e[1] in ("fsync", "fdatasync", "syncfs")] == []
    assert project.opchain("verify").returncode == 0  # digests are kept all the same


def data_files(dataset: Path) -> dict[str, bytes]:
    """A dataset's bytes, but its own files, which record when and where it and its input were
    made: its data, datastore and figures."""
    own = ("metadata.yaml", "input_metadata.yaml")
    return {p.relative_to(dataset).as_posix(): p.read_bytes()
            for p in sorted(dataset.rglob("*")) if p.is_file() and p.name not in own}  # fmt: skip


def flip_byte(path: Path, at: int = 0) -> None:
    """Bit rot: one byte changed, the file's size and modification time as they were."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_verify_reports_each_damage_and_remove_damaged_recomputes_exactly_those(
    project: Project,
) -> None:
    project.snakemake()
    runs = project.manifest()["runs"]
    add_one, jitter, add = (project.storage / s["dir"] for s in runs[0]["steps"])
    results = sorted(project.storage.glob("operation_chain_results/*/*/dataset_*"))
    original = {d: data_files(d) for d in results}
    started = {d: yaml.safe_load((d / "metadata.yaml").read_text())["started"] for d in results}
    intact = project.opchain("verify")
    assert intact.stdout.splitlines()[-1].startswith("verified 12 datasets")  # 10 results, 2 inputs
    assert "12 intact, 0 damaged" in intact.stdout
    assert project.opchain("verify", "--all").stdout == intact.stdout

    flip_byte(add_one / "dataset_1" / "row,col#x.array", 17)
    noise = jitter / "dataset_1" / "datastore" / "noise.npy"
    noise.write_bytes(noise.read_bytes()[:40])  # truncated
    (jitter / "dataset_2" / "row#.csv").unlink()
    (add / "dataset_1" / "notes.txt").write_text("not opchain's\n")
    flip_byte(project.storage / "inputs" / "a" / "row,col#x.array", 3)
    damaged = {add_one / "dataset_1", jitter / "dataset_1", jitter / "dataset_2", add / "dataset_1"}

    report = project.opchain("verify", check=False)
    assert report.returncode == 1
    lines = report.stdout.splitlines()
    said = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in lines[:-1]}
    digests = r"expected xxh3_128 [0-9a-f]{16}, found xxh3_128 [0-9a-f]{16}"
    rel = lambda d: d.relative_to(project.storage).as_posix()  # noqa: E731
    assert said.keys() == {f"damaged {rel(d)}" for d in damaged} | {"damaged input inputs/a"}
    assert re.fullmatch(rf"row,col#x\.array: {digests}", said[f"damaged {rel(add_one)}/dataset_1"])
    assert re.fullmatch(
        rf"datastore/noise\.npy: {digests}", said[f"damaged {rel(jitter)}/dataset_1"]
    )
    assert said[f"damaged {rel(jitter)}/dataset_2"] == "row#.csv: missing"
    assert said[f"damaged {rel(add)}/dataset_1"] == "notes.txt: unexpected (not written by opchain)"
    assert re.fullmatch(rf"row,col#x\.array: {digests} \(an input: never removed\)",
                        said["damaged input inputs/a"])  # fmt: skip
    assert "7 intact, 5 damaged" in lines[-1]
    # A path narrows the check to what lies under it.
    one = project.opchain("verify", str(jitter), check=False)
    assert one.returncode == 1 and "verified 2 datasets" in one.stdout and "2 damaged" in one.stdout

    removed = project.opchain("verify", "--remove-damaged", check=False)
    assert removed.returncode == 1
    assert sum(line.startswith("removed ") for line in removed.stdout.splitlines()) == 4
    assert [d for d in results if not d.exists()] == sorted(damaged)
    assert (project.storage / "inputs" / "a").is_dir()  # the user's: reported, never removed
    assert not list(project.storage.rglob(".dataset_*"))  # nothing left aside
    flip_byte(project.storage / "inputs" / "a" / "row,col#x.array", 3)  # restored from a backup

    project.snakemake()
    for dataset in results:
        assert data_files(dataset) == original[dataset], dataset  # byte-identical
        now = yaml.safe_load((dataset / "metadata.yaml").read_text())["started"]
        assert (now != started[dataset]) == (dataset in damaged), dataset  # exactly those
    assert project.opchain("verify").returncode == 0


def test_unverifiable_results_and_edited_inputs_are_not_damage(project: Project) -> None:
    project.snakemake()
    dataset = next(project.storage.glob("operation_chain_results/*/*/dataset_1"))
    text = (dataset / "metadata.yaml").read_text()
    (dataset / "metadata.yaml").write_text(text[: text.rindex("\nxxh3_128:\n") + 1])  # as before
    edited = project.storage / "inputs" / "b" / "row,col#x.array"
    edited.write_bytes(edited.read_bytes()[::-1])  # the user's edit: a new modification time
    result = project.opchain("verify", "--all")  # the chains now use steps not computed yet
    assert (
        "changed input inputs/b: row,col#x.array: modified (edited since it was used"
        in result.stdout
    )
    summary = result.stdout.splitlines()[-1]
    assert "10 intact, 0 damaged, 1 unverifiable, 1 changed" in summary
    assert "written before" in summary


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sealed_with_sha256(dataset: Path) -> None:
    """``dataset``'s metadata.yaml as opchain sealed it before XXH3: with SHA-256 digests."""
    text = (dataset / "metadata.yaml").read_text()
    body = text[: text.rindex("\nxxh3_128:\n") + 1]
    files = sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file())
    found = {
        name: sha256((dataset / name).read_bytes()) for name in files if name != "metadata.yaml"
    }
    found["metadata.yaml"] = sha256(body.encode())
    lines = "".join(f"  {json.dumps(k)}: {json.dumps(v)}\n" for k, v in found.items())
    (dataset / "metadata.yaml").write_text(f"{body}sha256:\n{lines}")


def recorded_with_sha256(record: Path, storage: Path) -> None:
    """An input's record as opchain wrote it before XXH3: SHA-256 digests, no algorithm named."""
    old = json.loads(record.read_text())
    files = {name: [size, time, sha256((storage / old["path"] / name).read_bytes())]
             for name, (size, time, _) in old["files"].items()}  # fmt: skip
    record.write_text(json.dumps({"path": old["path"], "files": files}))


def test_results_and_inputs_hashed_with_sha256_still_verify_and_their_links_use_xxh3(
    tmp_path: Path,
) -> None:
    project = grid_project(tmp_path / "p", [1])
    project.snakemake()
    results = sorted(project.storage.glob("operation_chain_results/*/*/dataset_*"))
    records = list((project.storage / ".opchain" / "inputs").iterdir())
    for dataset in results:
        sealed_with_sha256(dataset)
    for record in records:
        recorded_with_sha256(record, project.storage)
    verified = project.opchain("verify").stdout
    assert f"{len(results) + len(records)} intact, 0 damaged" in verified
    flip_byte(results[0] / "__daf__.yaml", 2)
    damaged = project.opchain("verify", check=False).stdout
    assert re.search(r"__daf__\.yaml: expected sha256 [0-9a-f]{16}, found sha256 ", damaged)
    flip_byte(results[0] / "__daf__.yaml", 2)
    # A grown grid links the old points: their new metadata is sealed with XXH3, all of it.
    project.edit(
        "config/operations/grid.yaml", "type: myops:add\nparameter_ranges: {value: [1, 2]}\n"
    )
    project.snakemake()
    metadata = {d: (d / "metadata.yaml").read_text()
                for d in project.storage.glob("operation_chain_results/*/*/dataset_*")
                if d not in results}  # fmt: skip
    assert any("computed_in" in yaml.safe_load(text) for text in metadata.values())
    assert all("\nxxh3_128:\n" in text for text in metadata.values())
    assert " 0 damaged" in project.opchain("verify", "--all").stdout
    assert all(json.loads(r.read_text())["algorithm"] == "xxh3_128" for r in records)


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path, str], None]]:
    """``tmpfs(path, size)`` mounts a tmpfs of ``size`` at ``path``; unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (as in CI)")
    mounted: list[Path] = []

    def mount(path: Path, size: str) -> None:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(path)

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=True)


def big_inputs(project: Project) -> None:
    """Two inputs of ~1.2 MiB each, in place of the small ones."""
    shutil.rmtree(project.storage / "inputs", ignore_errors=True)
    for i, name in enumerate(["a", "b"]):
        x = np.arange(120_000.0).reshape(40_000, 3) * (i + 1)
        write_matrix(project.storage / "inputs" / name, x)


def by_position(project: Project) -> dict[tuple[int, int, str], dict[str, bytes]]:
    """Every result's bytes by (run, step, dataset): step directories are named by time."""
    return {
        (r, i, dataset.name): data_files(dataset)
        for r, run in enumerate(project.manifest()["runs"])
        for i, step in enumerate(run["steps"])
        for dataset in sorted((project.storage / step["dir"]).glob("dataset_*"))
    }


def test_a_full_disk_or_read_only_root_is_one_line_and_leaves_nothing_partial(
    tmp_path: Path, tmpfs: Callable[[Path, str], None]
) -> None:
    reference = make_project(tmp_path / "reference")
    big_inputs(reference)
    reference.snakemake()
    project = make_project(tmp_path / "p")
    shutil.rmtree(project.storage)
    project.storage.mkdir()
    tmpfs(project.storage, "4m")  # the inputs take 2.5 MiB, a result 1.2 MiB
    big_inputs(project)

    full = project.snakemake(check=False)
    assert full.returncode != 0
    said = [line for line in full.stderr.splitlines() if line.startswith("opchain:")]
    assert said and re.fullmatch(
        r"opchain: no space left on device writing storage/\S+ \(free space and run again; "
        r"nothing partial was kept\)",
        said[0],
    ), full.stderr
    assert "Traceback" not in full.stderr and "Errno" not in full.stderr
    assert not list(project.storage.rglob("*.tmp-*"))  # nothing partial, nothing aside
    assert project.opchain("verify", "--all").returncode == 0  # what was published is whole

    subprocess.run(["mount", "-o", "remount,ro", str(project.storage)], check=True)
    read_only = project.snakemake(check=False)
    assert read_only.returncode != 0
    assert re.search(r"^opchain: read-only file system writing \S+ \(make it writable and run "
                     r"again; nothing partial was kept\)$", read_only.stderr, re.MULTILINE)  # fmt: skip
    assert "Traceback" not in read_only.stderr
    assert project.opchain("status").returncode == 0  # a read-only root can still be read

    subprocess.run(["mount", "-o", "remount,rw,size=64m", str(project.storage)], check=True)
    project.snakemake()
    ours, theirs = by_position(project), by_position(reference)
    assert len(ours) == 12 and ours.keys() == theirs.keys()
    assert ours == theirs
