"""Monitoring: drift of live traffic against the training snapshot, live accuracy from
feedback, and the scenarios that shift traffic to show both at work.

Modules import their heavy dependencies where they use them: :mod:`.accuracy` needs only
SQLAlchemy (the server calls it on a timer), :mod:`.scenarios` only NumPy and pandas (the
simulator imports it), and Evidently is imported inside :func:`.drift.run_drift`.
"""
