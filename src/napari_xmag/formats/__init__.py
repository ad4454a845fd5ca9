"""File formats napari-xmag reads and writes beside its feature files.

``h5``: the checks every HDF5 reader makes before it reads a dataset a user's file declares.
"""
