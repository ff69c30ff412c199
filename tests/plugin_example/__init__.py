"""A user plugin (loaded with ``--user-dir``) that adds one task to OFA in one file: ``tasks/object_count.py``."""
