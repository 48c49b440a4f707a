"""raymix as a library, cell by cell as in a notebook: one config, the same run in one process
and on Ray, a rule of your own in the MixTailor pool, and the records in a DataFrame.

    RAYMIX_DATA_DIR=../shared/data python examples/library.py     # MNIST: about 1.5 minutes on 2 cores
    python examples/library.py --synthetic                          # no data needed: ~30 s

Every name comes from ``raymix`` itself (raymix/__init__.py lists them).
"""
import argparse
import tempfile

import torch

from raymix import RULES, ExperimentConfig, Rule, load_results, run_experiment, run_local

# %% 1. One config: every field has a default (docs/runtime.md lists them); bad values fail here.
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--synthetic", action="store_true", help="a synthetic dataset instead of MNIST")
parser.add_argument("--steps", type=int, default=60)
args = parser.parse_args()
out = tempfile.mkdtemp(prefix="raymix_library_")
cfg = ExperimentConfig(
    dataset="synthetic" if args.synthetic else "mnist",
    model="mlp" if args.synthetic else "paper_cnn",
    aggregator="mixtailor",          # a rule drawn at random from the paper's pool at every step
    attack="ipm(epsilon=0.1)",       # the two Byzantine workers send -0.1 x the honest mean
    steps=args.steps,
    eval_every=20,
    seed=0,
    output_dir=out,
)

# %% 2. The run in this one process (no Ray): a RunResult.
local = run_local(cfg)
print(f"one process: {local.final_accuracy:.3f} after {local.final['step']} steps ({local.steps_per_second:.1f} steps/s)")

# %% 3. The same run on Ray, workers as actors: the same RunResult type and the same records.
ray_run = run_experiment(cfg)
print(f"on Ray:      {ray_run.final_accuracy:.3f}; records in {ray_run.output_dir}")
gap = max(abs(a["test_accuracy"] - b["test_accuracy"]) for a, b in zip(local.records, ray_run.records))
print(f"largest gap in test accuracy between the two: {gap:.4f}")


# %% 4. A rule of your own, in the pool. Defined in this script, it runs in this process
# (run_local); for Ray's actors, put it in an importable module (a plugin, docs/extending.md).
@RULES.register("norm_clipped_mean")
class NormClippedMean(Rule):
    """Mean after clipping every row to the median row norm. Needs n > 2f."""

    needs = "n > 2f"

    def requirement(self, n, f):
        return None if n > 2 * f else f"n > 2f = {2 * f}"

    def aggregate(self, G, f, generator=None):
        norms = torch.linalg.vector_norm(G, dim=1).nan_to_num(nan=float("inf"))
        scale = (norms.median() / norms).clamp(max=1.0)
        return (torch.nan_to_num(G) * scale[:, None]).mean(0)


mine = run_local(cfg.replace(aggregator="mixtailor(add=[norm_clipped_mean])", output_dir=None))
print(f"the paper's pool plus norm_clipped_mean: {mine.final_accuracy:.3f}")

# %% 5. The records as a DataFrame (one row per evaluation), ready to plot.
frame = load_results(out)
print(frame[["step", "test_accuracy", "test_loss"]].to_string(index=False))
