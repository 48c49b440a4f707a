"""Shared, vectorized kernels for the aggregation rules (plain PyTorch, no Ray).

Everything here works on an (n, d) stack ``G`` by column chunks, so memory beyond the
input stays a small multiple of one chunk (or of one (n, d) copy where stated), and never
an (n, n, d) tensor. Python loops run over chunks, comparators or workers, never over
coordinates or pairs of workers.

Non-finite policy (see docs/rules.md):

* order statistics treat NaN as +inf, so a NaN sorts to the top like +inf;
* a distance that is NaN, infinite or overflows is +inf (never NaN);
* a row whose squared l2 norm is not finite (NaN/Inf entries, or values like 1e38 whose
  square overflows in float32) is "bad" for the Gram-based kernels: its distance to every
  other row is +inf.

One module per algorithm: ``networks`` (order statistics of a few rows), ``counting`` (of
many rows), ``distances`` (l^p distances, Gram matrices, weighted row sums), ``rounds``
(Bulyan's incremental selection). The names the rules use are re-exported here.
"""
from raymix.rules._kernels.chunks import INF, column_chunks
from raymix.rules._kernels.counting import (
    coordinate_median_rows, counting_ok, median_by_counting, sorted_columns, trimmed_mean_by_counting, trimmed_mean_rows,
)
from raymix.rules._kernels.distances import (
    bad_rows, combine_rows, compile_enabled, gram, ipow_, lp_dist_to, lp_pairwise, pairwise_sq_dists, pow2_scale,
    sq_dists_from_gram,
)
from raymix.rules._kernels.networks import NETWORK_MAX_ROWS, median_reduce, order_statistics, selection_network
from raymix.rules._kernels.rounds import (
    SMALL_ROWS, bulyan_comed_rounds, bulyan_comed_rounds_on_device, bulyan_gram_rounds, bulyan_krum_rounds, small_krum_scores, small_weiszfeld,
)

__all__ = [
    "INF", "column_chunks", "coordinate_median_rows", "counting_ok", "median_by_counting", "sorted_columns", "trimmed_mean_by_counting", "trimmed_mean_rows",
    "bad_rows", "combine_rows", "compile_enabled", "gram", "ipow_", "lp_dist_to", "lp_pairwise", "pairwise_sq_dists",
    "pow2_scale", "sq_dists_from_gram", "NETWORK_MAX_ROWS", "median_reduce", "order_statistics", "selection_network",
    "SMALL_ROWS", "bulyan_comed_rounds", "bulyan_comed_rounds_on_device", "bulyan_gram_rounds", "bulyan_krum_rounds", "small_krum_scores", "small_weiszfeld",
]
