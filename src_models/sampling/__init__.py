"""Random patch diffusion as pure functions over tensors: the noise schedule, solvers (how a
level's ε moves the latents), plans (which windows run at each level), classifier-free guidance
around any denoiser, and ``sample_area``, the loop that ties them.  No I/O, no model loading,
no canvas: a denoiser is any callable ``(x, t, mask) -> ε``."""
