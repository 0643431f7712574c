"""Models: the model card, the networks and codecs it names, and loading them.

``card`` (what a model is, as plain values; no torch), ``base`` (the :class:`Model` and the
registries that build its networks from a card), ``loading`` (by name, directory or published
checkpoint), ``device`` (which torch device a name means), ``codec``/``tiling`` (latents to pixels
and back, in tiles), ``fast`` (the network as the sampler calls it: channels_last, fp16, batch
budget), ``tiny`` (the built-in test model).  ``native/`` holds the project's own networks,
``release/`` the published DiffInfinite release's, its checkpoint reader and conformance check.
"""
