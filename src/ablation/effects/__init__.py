"""What each design choice contributed, and how sure we are: statistics on trials' outcomes.

Pure functions (NumPy and SciPy, no store, no model), below both the study, which decides
adaptive seeds' rounds with them, and the report, which shows them.

* :mod:`~ablation.effects.estimates`: per-seed effects with seed, test-set and combined
  intervals, verdicts, interactions;
* :mod:`~ablation.effects.sequential`: adaptive seeds: every look's intervals widened for
  the stopping, the decisions, the next round's configurations.
"""
