"""The project's own networks: the label-map-conditioned UNet, the latent autoencoder and the
layout (mask) model's helpers."""
