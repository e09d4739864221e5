"""minunet: the original U-Net (Ronneberger, Fischer, Brox 2015) written from scratch.

Every layer has a hand-written forward and backward that runs on NumPy (with
Numba for the CPU hot loops) and on CuPy with our own CUDA kernels. Importing
minunet is cheap: no CuPy, no compilation, no data.
"""

__version__ = "0.1.0"
