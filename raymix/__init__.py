"""raymix: Ray-based simulation of Byzantine-robust distributed SGD with MixTailor."""
__version__ = "0.1.0"
