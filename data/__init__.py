"""Data layer: folder scan, class texts, folds, class weights, transforms, image cache, demo data.

Imports ``utils`` only, never ``models`` (docs/design.md §2).
"""
