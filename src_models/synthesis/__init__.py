"""Synthesis: from a request to finished regions on disk.

``request`` (the plain values of a run and their resolution against a model card), ``run`` (a
request checked against its model and canvas), ``regions`` (region by region, with finished
neighbours as context), ``sweep`` (the whole canvas level by level), ``canvases`` (the use cases
every interface calls: make, resume, repair a canvas), ``editing`` (slides in, inpaint, outpaint),
``layouts`` (masks drawn by a model's mask model or procedurally) and ``many`` (many canvases on
dask.distributed)."""
