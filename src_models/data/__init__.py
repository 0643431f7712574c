"""Data sets in and out: annotated slides cut into training tiles (``dataset``), finished canvases
exported as tiles, GeoJSON or OME-TIFF (``export``), and label maps derived from H&E by colour
deconvolution (``masks_from_he``, how the default model's training labels were made)."""
