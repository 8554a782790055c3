"""The embedded demo: synthetic phantoms written to disk and the end-to-end run over them."""
