"""What this Paddle build and machine offer: GPUs, half-precision support, device peak FLOPs."""
import paddle

CPU_AMP = "CPU build: Paddle AMP is a no-op on CPU"

# Peak dense (no sparsity) fp16 tensor-core TFLOP/s with fp32 accumulation, from NVIDIA's
# datasheets, keyed by a substring of paddle.device.cuda.get_device_name(); the first match
# wins, so the more specific names come first. Anything else: pass --peak-tflops.
PEAK_FP16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100", 989.0), ("H800", 989.0), ("H20", 148.0),
    ("A100", 312.0), ("A800", 312.0), ("A30", 165.0), ("A40", 149.7), ("A10", 125.0),
    ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("V100", 125.0), ("T4", 65.0),
)


def gpu_count():
    if not paddle.is_compiled_with_cuda():
        return 0
    return paddle.device.cuda.device_count()


def no_gpu_reason():
    """None when a GPU is usable, else why not (a SKIP reason)."""
    if not paddle.is_compiled_with_cuda():
        return "no GPU: this is a CPU build of Paddle"
    if paddle.device.cuda.device_count() == 0:
        return "no GPU visible (CUDA build, but CUDA_VISIBLE_DEVICES/driver show none)"
    return None


def half_reason(dtype):
    """None when `dtype` ('float16' | 'bfloat16') AMP can run here, else why not."""
    reason = no_gpu_reason()
    if reason:
        return CPU_AMP if not paddle.is_compiled_with_cuda() else reason
    check = {"float16": paddle.amp.is_float16_supported,
             "bfloat16": paddle.amp.is_bfloat16_supported}[dtype]
    if not check("gpu:0"):
        name = "bf16" if dtype == "bfloat16" else "fp16"
        return f"no {name} support on {device_name()}"
    return None


def device_name():
    return paddle.device.cuda.get_device_name(0) if gpu_count() else "CPU"


def peak_tflops(name, given=None):
    """(peak fp16 dense TFLOP/s, where the figure comes from) or (None, why not)."""
    if given:
        return given, "--peak-tflops"
    for key, value in PEAK_FP16_TFLOPS:
        if key.lower() in name.lower():
            return value, f"datasheet peak of {key}"
    return None, f"no known peak for '{name}': pass --peak-tflops"
