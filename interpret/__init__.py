"""Looking inside adaptive-depth predictions: charts, attributions, layer usage, the query log and reports.

Everything here reads traces (``core.trace.Trace``) except ``compare``, which runs the demo's
models on one input, and ``attributions``, which re-runs a model to follow the exact path a
trace took. ``render`` turns traces into the demo's HTML. No module names a method: what
differs between methods comes from ``core.methods``.
"""
