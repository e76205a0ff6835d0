"""Hot loops, one module per backend, all with the same functions.

* ``contract``         — the list: every kernel's name, parameters, meaning, and
  whether every backend must provide it (required) or may (an optional fast
  path, with the default a backend without it gets). Read it first.
* ``numpy_ref``        — readable NumPy: the specification. Implements every
  kernel of the contract, the optional ones as their simple composition.
* ``numba_cpu``        — the same loops compiled with Numba (fast CPU).
* ``cupy_gpu``         — the same on a CUDA GPU with CuPy (RawKernels).
* ``simulated_device`` — numpy_ref behind a pretend device boundary: the
  test-only ``simulator`` backend, which finds host/device mix-ups on a CPU.
* ``geometry``         — window sizes and padding, shared by all of them.
* ``numba_blas``       — the matrix products inside numba_cpu's kernels (NumPy's own
  OpenBLAS called directly where it can be, else ``np.dot``).

``minicnn/backend.py`` checks a module against the contract when it is chosen
and hands the layers its kernel table, ``current.kernels``. Arrays in and out
live where the backend keeps them (host memory for numpy and numba, device
memory for cupy and the simulator). Kernels take and return arrays only; they
never import minicnn.
"""
