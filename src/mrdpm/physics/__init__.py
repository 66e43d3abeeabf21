"""MR physics in torch: FFTs, masks, linear operators, coils, noise, signal models.

Everything here depends on torch only and works on any device; complex data are complex64.
"""
