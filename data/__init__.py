"""The book's data files, shipped inside the package as ``unveiled.data`` (see data/README.md)."""
