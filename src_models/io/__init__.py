"""Files in: label masks (PNG/TIFF/NPY, colour-coded or not, and masks made for other models),
QuPath GeoJSON annotations, whole-slide images (SVS, OME-TIFF, OME-Zarr, plain images).  numpy
only: no torch."""
