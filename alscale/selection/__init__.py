"""The ``selection:`` job section: one declarative objective composed of filters, weighted
scores, hard group constraints and diversity (:mod:`alscale.selection.config`).

It becomes the options of the registered strategy ``objective``
(:mod:`alscale.strategies.objective`), so the coordinator, the Ray executor, resume and
``check_strategy`` treat a composed selection like any other strategy.
"""
