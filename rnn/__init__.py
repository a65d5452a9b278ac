"""Recurrent networks built on autograph (cells, architectures, training): see issue 3."""
