"""A corpus of broken input files and what floodwarn must do with each (see make_corpus.py)."""
