"""What a run and a study report: metrics, the metric table, tables, plots, report.md, the leaderboard.

Importing the package imports nothing: ``training.config`` reads the metric table from here and
``python -m reporting.leaderboard --status`` must answer without loading numpy or torch.
"""
