"""Data readers, transforms and converters for the official TSV/HDF5 formats (installed as ``ofa.data_utils``)."""
