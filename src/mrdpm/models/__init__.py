"""The denoiser: U-Net wrapped by a preconditioner, and the checkpoint format."""
