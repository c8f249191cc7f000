"""napari dock widgets: thin wrappers that read layers, run the headless core
in a ``thread_worker`` with progress, and return layers."""
