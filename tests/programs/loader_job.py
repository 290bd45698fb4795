#!/usr/bin/env python3
"""A training job in the shape of PyTorch's DataLoader, without PyTorch: the CUDA driver
(through ctypes) holds the model state on the GPU, and the batches come from worker
processes that Python's multiprocessing forks once CUDA is initialized. The workers hand
each batch over as torch's default sharing strategy does: the batch is written to a
deleted file in /dev/shm and its descriptor is passed through a multiprocessing queue
(multiprocessing.reduction.DupFd: the worker's resource sharer thread sends it over a
Unix socket when the main process asks). So the job holds what a DataLoader job holds:
forked children that inherited the driver's files, queues (pipes, semaphores in
/dev/shm, feeder threads), Unix sockets and deleted shared-memory files.

Each step: the state vector is read from the GPU, the batch added, the result written
back; the step's checksum is printed, and at the end the state's checksum. Everything is
integer arithmetic, so a restored run prints exactly what an uninterrupted one does.

--stray-driver-file keeps a file of the kind the driver holds open in the main process
beyond the driver's reach (the simulated GPU's kind, a userfaultfd), as NVML is
reported to do with /dev/nvidiactl on a real GPU (not checked here): NVIDIA's
checkpoint does not release it.

--nvml counts the devices through NVML first, as PyTorch's device_count() does (nvmlInit
through ctypes, never shut down) -- initialized three times, once with flags, and shut
down once, so two initializations stay in force -- and again at the end.

  loader_job.py STEPS [--workers N] [--size N] [--step-delay-ms MS] [--stray-driver-file] [--nvml]
"""
import argparse
import ctypes
import hashlib
import multiprocessing as mp
import multiprocessing.reduction as reduction
import os
import platform
import sys
import time


def batch(step, size):
    # Step `step`'s batch: deterministic bytes.
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(f"{step}:{i}".encode()).digest()
        i += 1
    return bytes(out[:size])


def worker(wid, workers, steps, size, q, done):
    for step in range(wid, steps, workers):
        fd = os.open("/dev/shm", os.O_TMPFILE | os.O_RDWR, 0o600)
        os.write(fd, batch(step, size))
        q.put((step, reduction.DupFd(fd)))
        os.close(fd)  # the resource sharer keeps its own copy until the batch is fetched
    q.put(None)
    done.wait()  # its resource sharer serves the last descriptors until the main process has them


def nvml_devices(nvml):
    n = ctypes.c_uint(0)
    r = nvml.nvmlDeviceGetCount_v2(ctypes.byref(n))
    if r != 0:
        sys.exit(f"loader_job: nvmlDeviceGetCount_v2 failed: NVML error {r}")
    return n.value


def check(r, what):
    if r != 0:
        sys.exit(f"loader_job: {what} failed: CUDA error {r}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("steps", type=int)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--size", type=int, default=1 << 16)
    p.add_argument("--step-delay-ms", type=float, default=0)
    p.add_argument("--stray-driver-file", action="store_true")
    p.add_argument("--nvml", action="store_true")
    a = p.parse_args()

    nvml = None
    if a.nvml:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit() != 0 or nvml.nvmlInitWithFlags(0) != 0 or nvml.nvmlInit_v2() != 0 or nvml.nvmlShutdown() != 0:
            sys.exit("loader_job: an NVML initialization or shutdown failed")
        print(f"loader_job: NVML counts {nvml_devices(nvml)} devices", flush=True)

    cu = ctypes.CDLL("libcuda.so.1")
    check(cu.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    check(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ctx = ctypes.c_void_p()
    check(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    check(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    state = ctypes.c_uint64()
    check(cu.cuMemAlloc_v2(ctypes.byref(state), ctypes.c_size_t(a.size)), "cuMemAlloc")
    check(cu.cuMemsetD8_v2(ctypes.c_uint64(state.value), 0, ctypes.c_size_t(a.size)), "cuMemsetD8")

    # Forked once CUDA is initialized, as a DataLoader's workers are (fork: Linux's default).
    fork = mp.get_context("fork")
    queues = [fork.Queue(maxsize=2) for _ in range(a.workers)]
    done = fork.Event()
    procs = [fork.Process(target=worker, args=(w, a.workers, a.steps, a.size, queues[w], done), daemon=True)
             for w in range(a.workers)]
    for w in procs:
        w.start()
    print(f"loader_job: {a.workers} workers, {a.steps} steps of {a.size} bytes", flush=True)

    stray = None  # opened after the fork: the workers do not inherit it
    if a.stray_driver_file:
        libc = ctypes.CDLL(None, use_errno=True)
        sys_userfaultfd = {"x86_64": 323, "aarch64": 282}[platform.machine()]
        stray = libc.syscall(sys_userfaultfd, 0o2000000 | 1)  # userfaultfd(O_CLOEXEC | UFFD_USER_MODE_ONLY)
        if stray < 0:
            sys.exit(f"loader_job: no userfaultfd: {os.strerror(ctypes.get_errno())}")
        print(f"loader_job: stray driver file as fd {stray}", flush=True)

    host = (ctypes.c_ubyte * a.size)()
    for step in range(a.steps):
        got = queues[step % a.workers].get(timeout=3600)
        if got is None or got[0] != step:
            sys.exit(f"loader_job: worker {step % a.workers} sent {got and got[0]} for step {step}")
        fd = got[1].detach()  # fetched from the worker's resource sharer over a Unix socket
        data = os.pread(fd, a.size, 0)
        os.close(fd)
        check(cu.cuMemcpyDtoH_v2(host, ctypes.c_uint64(state.value), ctypes.c_size_t(a.size)), "cuMemcpyDtoH")
        mixed = bytes((x + y) & 0xFF for x, y in zip(bytes(host), data))
        ctypes.memmove(host, mixed, a.size)
        check(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(state.value), host, ctypes.c_size_t(a.size)), "cuMemcpyHtoD")
        print(f"step {step + 1} sum {hashlib.sha256(mixed).hexdigest()[:16]}", flush=True)
        if a.step_delay_ms:
            time.sleep(a.step_delay_ms / 1000)
    for q in queues:
        if q.get(timeout=3600) is not None:
            sys.exit("loader_job: a worker sent more batches than asked")
    done.set()
    for w in procs:
        w.join(60)
        if w.exitcode != 0:
            sys.exit(f"loader_job: worker {w.pid} ended with {w.exitcode}")
    check(cu.cuMemcpyDtoH_v2(host, ctypes.c_uint64(state.value), ctypes.c_size_t(a.size)), "cuMemcpyDtoH")
    print(f"state checksum {hashlib.sha256(bytes(host)).hexdigest()}", flush=True)
    if nvml:
        print(f"loader_job: NVML still counts {nvml_devices(nvml)} devices", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
