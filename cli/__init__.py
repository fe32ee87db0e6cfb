"""Click command-line interface for rankscope (thin layer over the library)."""
