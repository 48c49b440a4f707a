"""Example raymix plugins (docs/extending.md). Importing the package registers all four:
the ``clipped_mean`` rule, the ``jittered_ipm`` attack, the ``tiny_cnn`` model and the
``blobs`` dataset."""
from raymix_example import attacks, data, models, rules  # noqa: F401  (each registers its names)
