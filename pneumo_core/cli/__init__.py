"""The command line: ``python -m pneumo_core ...``."""
