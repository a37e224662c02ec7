"""Diffusion: the guided-diffusion-compatible U-Net (network) and the Gaussian diffusion process (schedule,
losses, samplers), kept apart."""
