"""Probe of issue 13's ablation: ``l2s-bench race`` with gsplat's means learning-rate decay (to 1% over the
run, as the ``adam`` baseline has it) applied to Learn2Splat's means update too, to ask whether the missing
decay is why a network falls behind Adam late in a long run. Takes ``l2s-bench race``'s arguments:

    python benchmarks/issue13/means_decay_probe.py --scene synthetic --init dense --background 0 0 0 \
        --steps 10000 --threads 1 --optimizers l2s:CHECKPOINT --out runs/means_decay
"""
import sys

from l2s_optim import Learn2Splat
from l2s_optim.bench import cli, race


def l2s_factory_with_means_decay(steps: int) -> object:
    """The bench's ``l2s_factory`` plus the ``adam`` baseline's means decay (``race.means_decay``)."""

    def factory(network, seed):
        def make(splats):
            optimizer = Learn2Splat(splats, network, seed=seed)
            return optimizer, race.means_decay(optimizer, steps)

        return make

    return factory


if __name__ == "__main__":
    race.l2s_factory = l2s_factory_with_means_decay(int(sys.argv[sys.argv.index("--steps") + 1]))
    sys.argv = ["l2s-bench", "race", *sys.argv[1:]]
    cli.main()
