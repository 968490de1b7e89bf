"""Rule-based ``ss``/``bs`` scores (MACD-centred) for users who bring none."""

from __future__ import annotations

from mlsignal.rules.macd import (
    RuleConfig,
    last_rule_scores,
    last_score,
    rule_components,
    rule_scores,
    score_arrays,
)

__all__ = [
    "RuleConfig",
    "last_rule_scores",
    "last_score",
    "rule_components",
    "rule_scores",
    "score_arrays",
]
