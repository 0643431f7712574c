"""The canvas store: an OME-Zarr (NGFF 0.5, zarr v3) image written region by region, with its
latents, class mask and per-region state (``canvas`` and its parts), the checks and repairs of
what is on disk (``verify``), and provenance records.  numpy and zarr only: no torch, no napari."""
