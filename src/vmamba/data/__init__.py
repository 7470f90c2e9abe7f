"""Data shipped with vmamba: the built-in Fashion-MNIST subset (see README.md here)."""
