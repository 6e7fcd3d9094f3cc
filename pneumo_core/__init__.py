"""pneumo_core: pneumonia decision support for chest radiographs.

The core never imports streamlit; pages and the CLI are thin layers over it.
"""

__version__ = "0.1.0"
