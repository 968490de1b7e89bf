"""Rule-based ``ss``/``bs`` scores (MACD-centred) for users who bring none."""

from __future__ import annotations

from mlsignal.rules.macd import RuleConfig, last_rule_scores, rule_components, rule_scores

__all__ = ["RuleConfig", "last_rule_scores", "rule_components", "rule_scores"]
