"""Fuzz the daf readers: mutate datasets of both stores and read everything back.

Usage: ``python benchmarks/fuzz.py [--examples 10000] [--seed 0] [--dir /tmp]``

Each example copies a small dataset holding every kind of data (``tests/daf_fuzz.py``), applies
one mutation drawn by hypothesis (truncate, extend, flip or set a byte, duplicate a line or delete
a file of one kind: ``__daf__.yaml``, items, axis CSVs, 1D/2D sidecars, ``.array``, ``.indptr``,
``.indices``, ``.data``, string CSVs; in the HDF5 store: the raw bytes of datasets, string
entries, attributes, whole datasets replaced or deleted, bytes anywhere in the file), and reads it
all through ``open_reader``. The examples are split evenly between the two stores.

It prints, per mutation kind, how many examples read back consistently ("correct"), how many were
refused with one line of opchain's own error, and how many raised anything else or read back
inconsistent data ("other"), then the first few "other" cases. It exits with 1 if there is any.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from daf_fuzz import FILES_KINDS, H5_KINDS, Mutation, make_dataset, mutations, run_one

OUTCOMES = ("correct", "opchain error", "other")


def fuzz(store: str, examples: int, random_seed: int, base: Path) -> tuple[Counter, list[str]]:
    """Counts of (kind, outcome), and a description of each "other"."""
    template = make_dataset(store, base / f"template-{store}")
    counts: Counter = Counter()
    others: list[str] = []

    @seed(random_seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(mutation=mutations(store))
    def one(mutation: Mutation) -> None:
        folder = Path(tempfile.mkdtemp(dir=base))
        result, detail = run_one(template, folder, mutation)
        counts[mutation.kind, result] += 1
        if result == "other":
            others.append(f"{mutation}: {detail}")

    one()
    return counts, others


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000, help="total, both stores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=None, help="where to write (default: the temp dir)")
    args = parser.parse_args()
    counts: Counter = Counter()
    others: list[str] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as base:
        for store in ("files", "h5"):
            store_counts, store_others = fuzz(store, args.examples // 2, args.seed, Path(base))
            counts.update(store_counts)
            others.extend(store_others)
    print(f"{'mutation kind':<16}" + "".join(f"{name:>15}" for name in OUTCOMES))
    for kind in (*FILES_KINDS, *H5_KINDS):
        print(f"{kind:<16}" + "".join(f"{counts[kind, name]:>15}" for name in OUTCOMES))
    totals = [sum(counts[kind, name] for kind in (*FILES_KINDS, *H5_KINDS)) for name in OUTCOMES]
    print(f"{'total':<16}" + "".join(f"{total:>15}" for total in totals))
    for line in others[:20]:
        print(f"other: {line}")
    return 1 if others else 0


if __name__ == "__main__":
    sys.exit(main())
