"""Datasets: slices, patches and volumes from image or k-space files, with class labels."""
