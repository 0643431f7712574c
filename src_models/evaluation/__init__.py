"""How close is synthetic tissue to real tissue?  ``evaluate`` compares tiles of the two at one
physical scale: hand-made pathology features (or deep features from user-supplied weights),
Fréchet distance, improved precision/recall, authenticity, C_T, a classifier two-sample test,
nuclei statistics and, for canvases, the seam score.  The CLI is ``diffinfinite evaluate``."""
from .evaluate import canvas_seam_score, evaluate
from .report import write_report
from .sources import EvaluationError

__all__ = ["evaluate", "write_report", "canvas_seam_score", "EvaluationError"]
