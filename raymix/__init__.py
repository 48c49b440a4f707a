"""raymix: Ray-based simulation of Byzantine-robust distributed SGD with MixTailor."""
__version__ = "0.1.0"

# Installs the loader of installed plugins' entry points, which the registries call when a
# name is missing (no Ray, no torch: importing raymix stays cheap).
import raymix.plugins  # noqa: E402,F401
