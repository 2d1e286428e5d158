"""Scoring without a model: the Scorer contract (``base``) and the co-occurrence scorer (``cooc``).

Pure Python, no torch: the worker, the model's evaluation and the serving layer all build on it.
"""

from streamrec.scoring.base import Exclusion, ScoreRequest, Scored, Scorer
from streamrec.scoring.cooc import CooccurrenceScorer
from streamrec.scoring.null import NullScorer

__all__ = ["CooccurrenceScorer", "Exclusion", "NullScorer", "ScoreRequest", "Scored", "Scorer"]
