"""Command-line entry points: ``ofa-train``, ``ofa-evaluate``, ``ofa-predict``."""
