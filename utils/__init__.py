"""Shared helpers: configuration, logging, seeding, metrics and safe file I/O.

Nothing in here imports ``data``, ``models`` or ``train_clip`` (see DESIGN.md §2).
"""
