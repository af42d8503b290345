"""Looking inside adaptive-depth predictions: charts, attributions, layer usage, the query log and reports.

Everything here reads traces (``core.trace.Trace``); only ``attributions`` re-runs a model, to
follow the exact path a trace took.
"""
