"""The published DiffInfinite release: its UNets, the SD-2 VAE codec, its mask model's grey codes,
its checkpoint reader/converter and the conformance check against its reference vectors."""
