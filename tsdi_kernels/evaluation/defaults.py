"""Defaults of the strength sweep, apart from sweep.py so that `tsdi eval --help` shows them without torch."""
DEFAULT_GRID = (0.25, 0.5, 1.0, 1.5)  # the starting strengths of --auto
DEFAULT_REFINE_STEPS = 2  # strengths added by bisection
DEFAULT_MARGIN = 0.05  # harmful-refusal points the recommendation may give away against the aligned model
