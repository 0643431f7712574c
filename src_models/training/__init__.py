"""Training the codec, the image model and the layout model (``train``; ``diffinfinite train`` or
``torchrun -m src_models.training.train``), data-parallel across processes (``distributed``)."""
