"""Readers and writers for MRI data: fastMRI/ISMRMRD HDF5, BART .cfl, NumPy, MATLAB v7.3, NIfTI, DICOM."""
