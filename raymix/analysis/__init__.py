"""From a sweep's results to tables and figures: ``load_results`` then the plots."""
from raymix.analysis.load import load_results, final_records

__all__ = ["load_results", "final_records"]
