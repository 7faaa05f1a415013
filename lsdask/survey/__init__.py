"""The survey domain: brick grid, WCS, CCD tables, brick lists, release layout.

Nothing in this package imports Dask.
"""
