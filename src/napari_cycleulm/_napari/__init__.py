"""The napari side of the plugin: everything that may import napari, Qt or magicgui.

* :mod:`.reader`, :mod:`.writer`, :mod:`.sample_data`: the reader, writer and
  sample-data hooks named in ``napari.yaml`` (the npe2 manifest).
* :mod:`.widgets`: the dock widgets of *Plugins > CycleULM* (one
  ``*_widget.py`` per manifest entry) and their shared helpers (``_base``,
  ``_layers``, ``_display``, ``_layer_export``, ``_model_picker``, ``_plot``).

They call the headless core (the rest of :mod:`napari_cycleulm`) with the same
defaults as the command line; the core never imports it.
"""
