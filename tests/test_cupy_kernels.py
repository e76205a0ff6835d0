"""The CUDA kernels of kernels/cupy_gpu.py, checked even where there is no GPU.

1. Every ``*_SOURCE`` string compiles with ``nvcc`` for float and double
   (read from the file with ``ast``: CuPy is not imported).
2. The real module runs on the CPU against numpy_ref: a stand-in ``cupy``
   (NumPy arrays, and a ``RawModule`` that compiles the same CUDA C as C++
   with g++ and runs every thread of the grid one after another) is put in
   ``sys.modules`` while kernels/cupy_gpu.py is loaded. That exercises the
   wrappers, the argument order and types, the launch size and every index
   computation — everything except the GPU itself. Each thread of our kernels
   writes only its own elements, so running the threads one by one computes
   what the GPU computes.
3. The same checks on the device backends: the ``simulator`` everywhere, and
   the real ``cupy`` backend where a GPU is present (skipped with the reason
   otherwise). tests/test_kernels_parity.py adds hypothesis-drawn shapes for
   every backend.
"""
import ast
import ctypes
import hashlib
import importlib.util
import pathlib
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import scipy.special

import kernel_checks as checks
import minicnn as mc
from minicnn.backend import current, to_device, to_host
from minicnn.kernels import numpy_ref

pytestmark = pytest.mark.tutorial09        # what tutorials/09_*.ipynb teaches (tests/README.md)

CUPY_GPU = pathlib.Path(__file__).resolve().parents[1] / "kernels" / "cupy_gpu.py"
FLOAT_TYPES = {"float": np.float32, "double": np.float64}
INDEX_TYPES = {"signed char": np.int8, "int": np.int32}


def cuda_sources():
    """{name: source} of the module-level ``*_SOURCE`` strings in cupy_gpu.py."""
    tree = ast.parse(CUPY_GPU.read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.endswith("_SOURCE") and isinstance(node.value, ast.Constant):
                found[name] = node.value.value
    return found


def kernel_names(source):
    return re.findall(r'extern "C" __global__\s+void\s+(\w+)\s*\(', source)


def test_the_sources_are_found_and_define_every_gpu_kernel():
    sources = cuda_sources()
    assert set(sources) == {"UNFOLD_SOURCE", "MAX_POOL_SOURCE", "FUSED_POOL_SOURCE", "AVG_POOL_SOURCE",
                            "DEPTHWISE_SOURCE", "NORM_SOURCE"}
    names = {n for s in sources.values() for n in kernel_names(s)}
    assert names == {"im2col", "col2im", "max_pool_forward", "max_pool_backward",
                     "bias_relu_max_pool_forward", "bias_relu_max_pool_backward",
                     "avg_pool_forward", "avg_pool_backward",
                     "depthwise_forward", "depthwise_backward_input", "depthwise_backward_weight",
                     "batch_norm_normalize", "batch_norm_backward_input", "relu_forward", "relu_backward"}


# -- 1. nvcc ------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (the CUDA compiler) is not on PATH")
@pytest.mark.parametrize("float_type,index_type", [("float", "signed char"), ("double", "int")])
@pytest.mark.parametrize("name", sorted(cuda_sources()))
def test_cuda_source_compiles_with_nvcc(tmp_path, name, float_type, index_type):
    # the same prefix kernels/cupy_gpu.py::_kernel puts in front of each source
    code = f"typedef {float_type} T;\ntypedef {index_type} I;\n" + cuda_sources()[name]
    src = tmp_path / f"{name.lower()}.cu"
    src.write_text(code)
    result = subprocess.run(["nvcc", "--ptx", "-Werror", "all-warnings", str(src), "-o", str(tmp_path / "k.ptx")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"nvcc failed on {name} ({float_type}):\n{result.stderr}"
    ptx = (tmp_path / "k.ptx").read_text()
    for kernel in kernel_names(cuda_sources()[name]):
        assert f".entry {kernel}(" in ptx, f"{kernel} missing from the PTX (extern \"C\" lost?)"


# -- 2. the module on the CPU, through a stand-in cupy ----------------------------------------------
EMULATION_HEADER = r"""
// CUDA's names, for running a kernel body on the CPU one thread at a time
#include <algorithm>
#include <cstring>
using std::max;
using std::min;
#define __global__
#define __device__
struct Dim3 { unsigned int x, y, z; };
static Dim3 blockIdx, threadIdx, blockDim, gridDim;
extern "C" void set_thread(unsigned int block, unsigned int thread, unsigned int blocks,
                           unsigned int threads) {
    blockIdx.x = block; threadIdx.x = thread; gridDim.x = blocks; blockDim.x = threads;
}
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }
"""


class _EmulatedKernel:
    """A kernel compiled for the host, launched like ``cupy.RawKernel``: ``k(grid, block, args)``."""

    def __init__(self, library, name, code):
        self.library, self.name = library, name
        signature = re.search(r"void\s+" + name + r"\s*\(([^)]*)\)", code).group(1)
        self.params = [(" ".join(d.split()[:-1]), d.split()[-1]) for d in signature.split(",")]
        self.types = {alias: c for c, alias in re.findall(r"typedef (.+?) (T|I);", code)}

    def __call__(self, grid, block, args):
        assert len(args) == len(self.params), f"{self.name}: {len(args)} arguments for {self.params}"
        c_args = []
        for (c_type, pname), value in zip(self.params, args):
            if c_type == "int":           # CuPy would pass a Python int as a 64-bit long long
                assert type(value) is np.int32, f"{self.name}: {pname} must be np.int32, got {type(value)}"
                c_args.append(ctypes.c_int(int(value)))
            else:                         # T*, const T*, I*, const I*: the array's dtype must match
                element = c_type.replace("const", "").replace("*", "").strip()
                wanted = {**FLOAT_TYPES, **INDEX_TYPES, "bool": np.bool_}[self.types.get(element, element)]
                assert isinstance(value, np.ndarray) and value.dtype == wanted and value.flags.c_contiguous, \
                    f"{self.name}: {pname} must be a C-contiguous {np.dtype(wanted)} array"
                c_args.append(ctypes.c_void_p(value.ctypes.data))
        (blocks,), (threads,) = grid, block
        function = getattr(self.library, self.name)
        for b in range(blocks):
            for t in range(threads):
                self.library.set_thread(b, t, blocks, threads)
                function(*c_args)


class _EmulatedRawModule:
    _built = {}

    def __init__(self, code, build_dir):
        key = hashlib.sha1(code.encode()).hexdigest()[:16]
        if key not in self._built:
            path = build_dir / f"kernels_{key}.so"
            result = subprocess.run(["g++", "-O1", "-shared", "-fPIC", "-x", "c++", "-", "-o", str(path)],
                                    input=EMULATION_HEADER + code, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, f"g++ could not compile the kernel source:\n{result.stderr}"
            self._built[key] = ctypes.CDLL(str(path))
        self.library, self.code = self._built[key], code

    def get_function(self, name):
        return _EmulatedKernel(self.library, name, self.code)


@pytest.fixture(scope="module")
def emulated_cupy_gpu(tmp_path_factory):
    """kernels/cupy_gpu.py loaded against a host stand-in for cupy and cupyx."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is needed to run the CUDA kernels on the CPU")
    build_dir = tmp_path_factory.mktemp("cuda_on_cpu")
    cupy = types.ModuleType("cupy")
    cupy.ndarray, cupy.empty, cupy.ascontiguousarray = np.ndarray, np.empty, np.ascontiguousarray
    cupy.zeros, cupy.full, cupy.sqrt = np.zeros, np.full, np.sqrt
    cupy.RawModule = lambda code: _EmulatedRawModule(code, build_dir)
    cupyx = types.ModuleType("cupyx")
    cupyx.scatter_add = np.add.at
    cupyx.scipy = types.ModuleType("cupyx.scipy")
    cupyx.scipy.special = types.ModuleType("cupyx.scipy.special")
    cupyx.scipy.special.erf = scipy.special.erf
    stand_ins = {"cupy": cupy, "cupyx": cupyx, "cupyx.scipy": cupyx.scipy,
                 "cupyx.scipy.special": cupyx.scipy.special}
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        # a module of the minicnn.kernels package, so its relative imports (.geometry) resolve
        spec = importlib.util.spec_from_file_location("minicnn.kernels.cupy_gpu_on_cpu", CUPY_GPU)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return module


def _same(a):
    return np.array(a)


@pytest.mark.parametrize("dtype", checks.FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", checks.UNFOLD_CASES, ids=checks.ids(checks.UNFOLD_CASES))
def test_cuda_im2col_col2im_on_the_cpu(emulated_cupy_gpu, dtype, case):
    checks.check_unfold(emulated_cupy_gpu, _same, _same, dtype, case)


@pytest.mark.parametrize("dtype", checks.FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", checks.DEPTHWISE_CASES, ids=checks.ids(checks.DEPTHWISE_CASES))
def test_cuda_depthwise_conv_on_the_cpu(emulated_cupy_gpu, dtype, case):
    checks.check_depthwise(emulated_cupy_gpu, _same, _same, dtype, case)


@pytest.mark.parametrize("dtype", checks.FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", checks.POOL_CASES, ids=checks.ids(checks.POOL_CASES))
def test_cuda_pooling_on_the_cpu(emulated_cupy_gpu, dtype, case):
    checks.check_max_pool(emulated_cupy_gpu, _same, _same, dtype, case)
    checks.check_max_pool(emulated_cupy_gpu, _same, _same, dtype, case, ties=True)
    checks.check_max_pool(emulated_cupy_gpu, _same, _same, dtype, case, nans=True)
    for count_include_pad in (True, False):
        checks.check_avg_pool(emulated_cupy_gpu, _same, _same, dtype, case, count_include_pad)


@pytest.mark.parametrize("dtype", checks.FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", checks.FUSED_POOL_CASES, ids=checks.ids(checks.FUSED_POOL_CASES))
def test_cuda_fused_bias_relu_max_pool_on_the_cpu(emulated_cupy_gpu, dtype, case):
    for ties in (False, True):
        for bias in (True, False):
            checks.check_bias_relu_max_pool(emulated_cupy_gpu, _same, _same, dtype, case, ties, bias)
    checks.check_bias_relu_max_pool(emulated_cupy_gpu, _same, _same, dtype, case, nans=True)


@pytest.mark.parametrize("dtype", checks.FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", checks.CONV_CASES, ids=checks.ids(checks.CONV_CASES))
def test_cuda_conv_keeping_its_input_on_the_cpu(emulated_cupy_gpu, dtype, case):
    checks.check_conv(emulated_cupy_gpu, _same, _same, dtype, case)


@pytest.mark.parametrize("dtype", checks.FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", checks.NORM_SHAPES, ids=checks.ids(checks.NORM_SHAPES))
def test_cuda_batch_norm_and_relu_on_the_cpu(emulated_cupy_gpu, dtype, shape):
    for affine in (True, False):
        checks.check_batch_norm(emulated_cupy_gpu, _same, _same, dtype, shape, affine)
    checks.check_relu(emulated_cupy_gpu, _same, _same, dtype, shape)


@pytest.mark.parametrize("dtype", checks.FLOATS, ids=["f32", "f64"])
def test_cuda_module_scatter_add_and_erf_on_the_cpu(emulated_cupy_gpu, dtype):
    for make_index in checks.SCATTER_INDICES.values():
        checks.check_scatter_add(emulated_cupy_gpu, _same, _same, dtype, make_index)
    checks.check_erf(emulated_cupy_gpu, _same, _same, dtype)


def test_cuda_max_pool_padding_never_wins_on_the_cpu(emulated_cupy_gpu):
    x = np.full((1, 1, 3, 3), -1e30)                          # every real value below any "0" padding
    y, arg = emulated_cupy_gpu.max_pool2d_forward(x, 3, 3, (1, 1), (1, 1))
    y_ref, arg_ref = numpy_ref.max_pool2d_forward(x, 3, 3, (1, 1), (1, 1))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(arg, arg_ref)


def test_cuda_pooling_nan_matches_pytorch_on_the_cpu(emulated_cupy_gpu):
    """The CUDA max pooling and fused pooling against PyTorch itself (issue 30): a window
    with a NaN pools to NaN, the gradient goes to its last NaN, a padded window of -inf
    routes to its first real pixel; fused, relu(nan) = nan and the NaN's gradient passes."""
    torch = pytest.importorskip("torch")
    k = emulated_cupy_gpu
    rs = np.random.default_rng(7)
    x = checks.plant_nans(rs.standard_normal((2, 2, 7, 8)), rs)
    gy_rs = np.random.default_rng(8)
    for kh, kw, stride, padding in [(2, 2, (2, 2), (0, 0)), (3, 3, (1, 1), (1, 1)), (3, 2, (2, 1), (1, 0))]:
        tx = torch.tensor(x, requires_grad=True)
        ty = torch.nn.functional.max_pool2d(tx, (kh, kw), stride, padding)
        gy = gy_rs.standard_normal(ty.shape)
        ty.backward(torch.tensor(gy))
        y, arg = k.max_pool2d_forward(x, kh, kw, stride, padding)
        np.testing.assert_array_equal(y, ty.detach().numpy())     # NaN where PyTorch's NaNs are
        np.testing.assert_allclose(k.max_pool2d_backward(gy, arg, x.shape, kh, kw, stride, padding),
                                   tx.grad.numpy(), rtol=1e-13, atol=1e-13)
    y = x.transpose(1, 0, 2, 3).copy()                            # as a conv output: (C, N, H, W)
    b = np.array([0.3, -0.2])
    tz = torch.tensor(x, requires_grad=True)
    tp = torch.nn.functional.max_pool2d(torch.relu(tz + torch.tensor(b).reshape(1, 2, 1, 1)), 2)
    gp = gy_rs.standard_normal(tp.shape)
    tp.backward(torch.tensor(gp))
    out, arg = k.bias_relu_max_pool2d_forward(y, b, 2, 2, (2, 2))
    np.testing.assert_array_equal(out, tp.detach().numpy())
    dy = k.bias_relu_max_pool2d_backward(gp, arg, y.shape, 2, 2, (2, 2))
    np.testing.assert_allclose(dy.transpose(1, 0, 2, 3), tz.grad.numpy(), rtol=1e-13, atol=1e-13)


def test_cuda_wrappers_check_their_arguments_on_the_cpu(emulated_cupy_gpu):
    k = emulated_cupy_gpu
    with pytest.raises(TypeError, match="float32 or float64"):
        k.im2col(np.zeros((1, 1, 4, 4), dtype=np.int64), 2, 2)
    with pytest.raises(ValueError, match="4 dimensions"):
        k.max_pool2d_forward(np.zeros((4, 4)), 2, 2, (2, 2), (0, 0))
    with pytest.raises(ValueError, match="does not fit"):
        k.avg_pool2d_forward(np.zeros((1, 1, 2, 2)), 3, 3, (1, 1), (0, 0))
    with pytest.raises(ValueError, match="expected cols of shape"):
        k.col2im(np.zeros((4, 5)), (1, 1, 3, 3), 2, 2)
    with pytest.raises(TypeError, match="kernel im2col: expected arguments"):
        k._launch("UNFOLD", "im2col", 1, np.float32, img=None)
    y = np.zeros((3, 2, 4, 4))                                # (C, N, H, W)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        k.bias_relu_max_pool2d_forward(y, np.zeros(2), 2, 2, (2, 2))
    with pytest.raises(ValueError, match="does not fit"):
        k.bias_relu_max_pool2d_forward(y, None, 5, 5, (1, 1))
    out, arg = k.bias_relu_max_pool2d_forward(y, None, 2, 2, (2, 2))
    with pytest.raises(ValueError, match="expected gout of shape"):
        k.bias_relu_max_pool2d_backward(out, arg, (3, 2, 6, 6), 2, 2, (2, 2))
    with pytest.raises(TypeError, match="int8 or int32"):
        k.bias_relu_max_pool2d_backward(out, arg.astype(np.int64), y.shape, 2, 2, (2, 2))


# -- 3. the device backends themselves ------------------------------------------------------------
@pytest.fixture(params=["simulator", "cupy"])
def device_backend(request):
    previous = mc.get_backend()
    try:
        mc.set_backend(request.param)
    except mc.BackendError as e:
        if request.param != "cupy":      # the simulator must always load
            raise
        pytest.skip(f"{request.param} backend unavailable here: {e}")
    yield current.kernels
    mc.set_backend(previous)


@pytest.mark.parametrize("dtype", checks.FLOATS, ids=["f32", "f64"])
def test_device_backend_kernels_match_the_reference(device_backend, dtype):
    for case in checks.UNFOLD_CASES:
        checks.check_unfold(device_backend, to_device, to_host, dtype, case)
    for case in checks.POOL_CASES:
        checks.check_max_pool(device_backend, to_device, to_host, dtype, case)
        checks.check_max_pool(device_backend, to_device, to_host, dtype, case, ties=True)
        checks.check_max_pool(device_backend, to_device, to_host, dtype, case, nans=True)
        for count_include_pad in (True, False):
            checks.check_avg_pool(device_backend, to_device, to_host, dtype, case, count_include_pad)
    for make_index in checks.SCATTER_INDICES.values():
        checks.check_scatter_add(device_backend, to_device, to_host, dtype, make_index)
    checks.check_erf(device_backend, to_device, to_host, dtype)
    for case in checks.DEPTHWISE_CASES:
        checks.check_depthwise(device_backend, to_device, to_host, dtype, case)


@pytest.mark.parametrize("dtype", checks.FLOATS, ids=["f32", "f64"])
def test_device_backend_fused_kernels_match_the_reference(device_backend, dtype):
    for case in checks.FUSED_POOL_CASES:
        for ties in (False, True):
            for bias in (True, False):
                checks.check_bias_relu_max_pool(device_backend, to_device, to_host, dtype, case,
                                                ties, bias)
        checks.check_bias_relu_max_pool(device_backend, to_device, to_host, dtype, case, nans=True)


@pytest.mark.parametrize("dtype", checks.FLOATS, ids=["f32", "f64"])
def test_device_backend_batch_norm_relu_and_conv_match_the_reference(device_backend, dtype):
    for shape in checks.NORM_SHAPES:
        for affine in (True, False):
            checks.check_batch_norm(device_backend, to_device, to_host, dtype, shape, affine)
        checks.check_relu(device_backend, to_device, to_host, dtype, shape)
    for case in checks.CONV_CASES:
        checks.check_conv(device_backend, to_device, to_host, dtype, case)


def test_device_backend_kernels_refuse_host_arrays(device_backend):
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        device_backend.im2col(x, 2, 2, (1, 1), (0, 0), (1, 1))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        device_backend.max_pool2d_forward(x, 2, 2, (2, 2), (0, 0))
