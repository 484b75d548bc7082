"""The H200 figures of docs/calibration.md#h200-measurements (DeepSeek-R1-Distill-Qwen-7B Q4_K_M),
for the memory model's test (tests/unit/planner/test_memory_h200.py) and bench/gpu_check.py's
(tests/unit/bench/test_gpu_check.py)."""

# (n_gpu_layers, n_ctx, flash_attn, n_ubatch, model MiB, KV MiB, compute MiB, NVML delta MiB)
# The NVML figure is "after 512-token prompt + 128 tokens", except the n_ubatch 2048 row which
# was only measured after load.
H200_ROWS = [
    (0, 4096, True, 512, 0.0, 0.0, 730.36, 1346.8),
    (-1, 4096, False, 512, 4168.09, 224, 304.00, 5410.8),
    (-1, 4096, True, 512, 4168.09, 224, 304.00, 5312.8),
    (-1, 32768, True, 512, 4168.09, 1792, 304.00, 6880.8),
    (-1, 32768, False, 512, 4168.09, 1792, 1886.01, 8562.8),
    (14, 4096, True, 512, 2172.17, 104, 311.00, 3204.8),
    (-1, 131072, True, 512, 4168.09, 7168, 304.00, 12256.8),
    (-1, 4096, True, 2048, 4168.09, 224, 1216.00, 6138.8),
]
