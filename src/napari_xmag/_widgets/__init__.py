"""napari dock widgets: wiring controls to library calls, nothing more."""
