"""The ``mrdpm`` command."""
