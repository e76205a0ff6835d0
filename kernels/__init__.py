"""Hot loops, one module per backend, all with the same functions.

* ``numpy_ref``        — readable NumPy: the specification.
* ``numba_cpu``        — the same loops compiled with Numba (fast CPU).
* ``cupy_gpu``         — the same on a CUDA GPU with CuPy (RawKernels).
* ``simulated_device`` — numpy_ref behind a pretend device boundary: the
  test-only ``simulator`` backend, which finds host/device mix-ups on a CPU.

Each module provides::

    im2col(x, kh, kw, stride, padding, dilation) -> cols (C*kh*kw, N*oh*ow)
    col2im(cols, x_shape, kh, kw, stride, padding, dilation) -> dx (N, C, H, W)
    max_pool2d_forward(x, kh, kw, stride, padding) -> (y, argmax)
    max_pool2d_backward(gy, argmax, x_shape, kh, kw, stride, padding) -> dx
    avg_pool2d_forward(x, kh, kw, stride, padding, count_include_pad) -> y
    avg_pool2d_backward(gy, x_shape, kh, kw, stride, padding, count_include_pad) -> dx
    scatter_add(dst, index, values) -> None       (dst[index] += values, repeats add up)
    erf(x) -> y
    qgemm_u8s8(w_q, cols, x_zero_point) -> acc   (int8 x uint8 -> exact int32, for int8 inference)

Arrays in and out live where the backend keeps them (host memory for numpy
and numba, device memory for cupy and the simulator). Kernels take and return
arrays only; they never import minicnn.
"""
