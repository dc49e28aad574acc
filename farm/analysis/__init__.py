"""Analysis over the store: summaries, energy per token, A/B comparisons and verdicts."""
