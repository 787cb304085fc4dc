"""delrec_lib: the library behind the DELRec reproducibility kit's notebooks and CLI."""

__version__ = "0.1.0"
