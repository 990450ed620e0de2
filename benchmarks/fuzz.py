"""Long fuzz run of issue 11: random densification sequences through Learn2Splat's per-name views (gsplat's
strategy ops) interleaved with steps, visibility masks, frozen attributes, save/load resumes and bad inputs,
with every invariant checked after every op (the engine is ``tests/fuzzing.py``; ``tests/test_fuzz.py`` is
its CI-sized version).

    OMP_NUM_THREADS=1 python benchmarks/fuzz.py --sequences 1000 --out benchmarks/fuzz

Writes ``<out>/results.json``: the counts of sequences, ops and violations, each violation (op, seed and
traceback, to replay with ``tests.fuzzing.run_sequence``), op counts by kind and the wall-clock time.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fuzzing import random_sequence, run_sequence

from l2s_optim.cli import HelpFormatter, non_negative_int, positive_int


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--sequences", type=positive_int, default=1000, help="random sequences to run")
    p.add_argument("--length", type=positive_int, default=20, help="ops per sequence")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the first sequence (then +1 each)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "fuzz", help="output folder")
    args = p.parse_args(argv)
    start, ops, kinds, violations = time.perf_counter(), 0, collections.Counter(), []
    for index in range(args.sequences):
        seed = args.seed + index
        rng = random.Random(seed)
        sequence = random_sequence(rng, args.length)
        result = run_sequence(sequence, n=rng.randint(50, 300), knn_every=rng.choice([1, 3]), seed=seed)
        ops += result.ops
        kinds.update(name for name, _ in sequence[: result.ops])
        violations += [{"sequence_seed": seed, "sequence": sequence, "violation": v} for v in result.violations]
        if (index + 1) % 50 == 0:
            print(f"{index + 1} sequences, {ops} ops, {len(violations)} violations, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    report = {
        "sequences": args.sequences, "ops": ops, "violations": len(violations), "ops_by_kind": dict(sorted(kinds.items())),
        "seconds": round(time.perf_counter() - start, 1), "length": args.length, "first_seed": args.seed,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "violation_details": violations,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    print(f"{report['sequences']} sequences, {report['ops']} ops, {report['violations']} violations in "
          f"{report['seconds']} s; wrote {args.out / 'results.json'}")
    return report


if __name__ == "__main__":
    main()
