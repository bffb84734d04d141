"""Data layer: folder scan, class texts, folds, class weights, transforms, image cache, demo data.

Imports ``utils`` only, never ``models`` (DESIGN.md §2).
"""
