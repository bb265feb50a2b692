"""Run inside the container with the host's python3: the CUDA driver API
through ctypes, so nothing but libcuda.so.1 is needed. For each GPU: name,
memory, and a 1 MiB alloc / memset / copy-back / free. The last line is the
verdict (CUDA_CHECK_OK); any failure exits 1 naming the call and its CUresult.

Standard library only, and no import from this package: it is copied alone
next to the containers and run by whatever python3 the rootfs has.
"""

import ctypes
import sys

SIZE = 1 << 20


def load() -> ctypes.CDLL:
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        sys.exit(f"cannot load the CUDA driver library: {e}")


def call(cuda: ctypes.CDLL, fn: str, *args: object) -> None:
    rc = getattr(cuda, fn)(*args)
    if rc:
        name = ctypes.c_char_p()
        cuda.cuGetErrorName(rc, ctypes.byref(name))
        sys.exit(f"{fn} failed: CUresult {rc} ({(name.value or b'?').decode()})")


def check_device(cuda: ctypes.CDLL, i: int) -> str:
    dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
    name, total = ctypes.create_string_buffer(256), ctypes.c_size_t()
    call(cuda, "cuDeviceGet", ctypes.byref(dev), i)
    call(cuda, "cuDeviceGetName", name, 256, dev)
    call(cuda, "cuDeviceTotalMem_v2", ctypes.byref(total), dev)
    call(cuda, "cuDevicePrimaryCtxRetain", ctypes.byref(ctx), dev)
    call(cuda, "cuCtxSetCurrent", ctx)
    call(cuda, "cuMemAlloc_v2", ctypes.byref(ptr), ctypes.c_size_t(SIZE))
    call(cuda, "cuMemsetD8_v2", ptr, ctypes.c_ubyte(0x5A), ctypes.c_size_t(SIZE))
    host = (ctypes.c_ubyte * SIZE)()
    call(cuda, "cuMemcpyDtoH_v2", host, ptr, ctypes.c_size_t(SIZE))
    call(cuda, "cuMemFree_v2", ptr)
    call(cuda, "cuDevicePrimaryCtxRelease_v2", dev)
    if bytes(host).count(0x5A) != SIZE:
        sys.exit(f"GPU {i}: 1 MiB memset/copy-back mismatch")
    return (f"GPU {i}: {name.value.decode()}, {total.value >> 20} MiB, "
            "1 MiB alloc/memset/copy/free ok")


def main() -> None:
    cuda = load()
    call(cuda, "cuInit", 0)
    ver, count = ctypes.c_int(), ctypes.c_int()
    call(cuda, "cuDriverGetVersion", ctypes.byref(ver))
    call(cuda, "cuDeviceGetCount", ctypes.byref(count))
    print(f"cuInit ok, driver API {ver.value // 1000}.{ver.value % 1000 // 10}, "
          f"{count.value} device(s)", flush=True)
    if count.value < 1:
        sys.exit("no CUDA device visible")
    for i in range(count.value):
        print(check_device(cuda, i), flush=True)
    print("CUDA_CHECK_OK")


if __name__ == "__main__":
    main()
