"""The ground floor: safe file I/O, the run folder's layout, user errors, device, logging, seeding.

Nothing in here imports ``data``, ``models``, ``reporting``, ``training`` or ``train_clip``
(see docs/design.md §2).
"""
