"""Stage graphs: what work a release needs, as Dask graphs, and their reductions."""
