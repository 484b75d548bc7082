"""What llama.cpp (as vendored in llama-cpp-python 0.3.36) allocates for a model on each device.

Every formula cites the figure it was calibrated on: ``H200`` rows are from
shared/reference/gpu-h200-measurements.md (a Qwen2 7B Q4_K_M shape: n_embd 3584, 28 heads,
vocab 152,064), ``CPU`` figures from llama-cpp-python's own buffer lines on this project's test
models (tests/unit/planner/test_memory_vs_llama.py checks them on every run). Sizes are bytes.

Per GPU the model costs: its layers' weights (the output layer's device also holds ``output`` or,
for tied embeddings, a copy of ``token_embd``), its layers' KV cache, a compute buffer, the
per-process CUDA context and the growth seen after the first requests. ``token_embd`` always
stays in host memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from planner.model_info import ModelInfo

MIB = 1024 * 1024

# H200, every row: NVML delta minus (model + KV + compute) was 528-533 MiB per process per GPU.
DEFAULT_CUDA_OVERHEAD_MIB = 530
# H200: NVML grew by 86 MiB (flash attention) / 184 MiB (without) after a 512-token prompt and
# 128 generated tokens, in every configuration, n_gpu_layers = 0 included.
GROWTH_FLASH_ATTN_MIB = 86
GROWTH_NO_FLASH_ATTN_MIB = 184
# llama.cpp's ggml_backend_sched keeps this many copies of split inputs when pipeline
# parallelism is on (several GPUs, full offload): GGML_SCHED_MAX_COPIES.
PIPELINE_COPIES = 4

KV_TYPES: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")

# Weight types that ggml-cpu repacks into a second CPU_REPACK buffer on x86 with AVX2
# (ggml/src/ggml-cpu/repack.cpp, ggml_repack_get_optimal_repack_type): Q4_0, Q4_K, IQ4_NL and
# MXFP4 when the row count is a multiple of 8. Q2_K joins them with AVX-512.
X86_AVX2_REPACK_TYPES = frozenset(
    {GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_K, GGMLQuantizationType.IQ4_NL, GGMLQuantizationType.MXFP4}
)


@dataclass(frozen=True)
class RunSettings:
    """The context parameters that change memory (llama-cpp-python's names)."""

    n_ctx: int = 4096
    n_ubatch: int = 512
    flash_attn: bool = False
    type_k: str = "f16"
    type_v: str = "f16"
    swa_full: bool = False
    offload_kqv: bool = True
    embedding: bool = False
    use_mmap: bool = True


@dataclass(frozen=True)
class CudaCosts:
    """Per-process CUDA costs that the GGUF cannot tell; calibrated on the H200."""

    overhead_bytes: int = DEFAULT_CUDA_OVERHEAD_MIB * MIB
    growth_bytes: int | None = None  # None: by flash attention, as measured

    def growth_for(self, settings: RunSettings) -> int:
        if self.growth_bytes is not None:
            return self.growth_bytes
        return (GROWTH_FLASH_ATTN_MIB if settings.flash_attn else GROWTH_NO_FLASH_ATTN_MIB) * MIB


@dataclass(frozen=True)
class DeviceMemory:
    """Predicted bytes of one model on one GPU."""

    layers: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int
    growth_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes + self.overhead_bytes + self.growth_bytes


@dataclass(frozen=True)
class HostMemory:
    """Predicted host (CPU) memory of one model."""

    mapped_bytes: int  # weights left in host memory (token_embd, CPU layers); mmap'd by default
    repack_bytes: int  # CPU_REPACK: a second copy of repackable CPU weights
    kv_bytes: int
    compute_bytes: int
    output_bytes: int  # the logits/embeddings output buffer

    @property
    def total_bytes(self) -> int:
        return self.mapped_bytes + self.repack_bytes + self.kv_bytes + self.compute_bytes + self.output_bytes


@dataclass(frozen=True)
class MemoryEstimate:
    devices: tuple[DeviceMemory, ...]  # in the model's device order (its CUDA_VISIBLE_DEVICES)
    host: HostMemory


def kv_type(name: str) -> GGMLQuantizationType:
    """The ggml type of a KV cache type name such as ``q8_0``."""
    if name not in KV_TYPES:
        raise ValueError(f"KV cache type {name!r} (must be one of: {', '.join(KV_TYPES)})")
    return GGMLQuantizationType[name.upper()]


def kv_type_problems(info: ModelInfo, settings: RunSettings) -> list[str]:
    """Cache types llama.cpp would refuse for this model: a quantized block must divide the
    head dimension ("K cache type q8_0 with block size 32 does not divide n_embd_head_k=16")."""
    out = []
    for key, name, dim in (("type_k", settings.type_k, info.key_length), ("type_v", settings.type_v, info.value_length)):
        block = GGML_QUANT_SIZES[kv_type(name)][0]
        if dim % block:
            out.append(f"{key} = {name!r} needs a head dimension divisible by {block} (this model's is {dim})")
    return out


def row_bytes(ggml_type: GGMLQuantizationType, n: int) -> int:
    """ggml_row_size: bytes of ``n`` elements of a (possibly block-quantized) type."""
    block, size = GGML_QUANT_SIZES[ggml_type]
    return n // block * size


def pad256(n: int) -> int:
    return (n + 255) // 256 * 256


def kv_cells(info: ModelInfo, settings: RunSettings) -> list[int]:
    """Cells of each layer's KV cache.

    llama-context.cpp pads n_ctx to 256. llama-kv-cache-iswa.cpp gives sliding-window layers
    ``pad256(min(n_ctx, n_swa + n_ubatch))`` cells unless swa_full, which makes them full size
    (llama.cpp's default; we default to False). Gemma 3 270M at n_ctx 32768: 576 vs 111 MiB.
    """
    full = pad256(settings.n_ctx)
    swa = full if settings.swa_full else pad256(min(full, info.sliding_window + settings.n_ubatch))
    return [swa if is_swa else full for is_swa in info.swa_layers]


def kv_layer_bytes(info: ModelInfo, settings: RunSettings) -> list[int]:
    """KV bytes per repeating layer: cells x (row(type_k, n_embd_k_gqa) + row(type_v, n_embd_v_gqa)).

    H200: 28 layers x 4 KV heads x 128 dims, f16, n_ctx 4096 -> 224 MiB; 32768 -> 1792 MiB.
    """
    tk, tv = kv_type(settings.type_k), kv_type(settings.type_v)
    cells = kv_cells(info, settings)
    return [
        cells[il] * (row_bytes(tk, info.n_embd_k_gqa(il)) + row_bytes(tv, info.n_embd_v_gqa(il)))
        for il in range(info.n_layers)
    ]


def _attention_stage(info: ModelInfo, settings: RunSettings, n_kv: int) -> int:
    """Peak of an attention block for n_ubatch tokens over n_kv cells.

    Without flash attention the f32 scores (n_kv x n_ubatch x n_head) and an f32 mask dominate:
    H200 n_ctx 32768 -> 1792 + 64 + 28 = 1884 MiB predicted, 1886.01 measured. Flash attention
    needs only an f16 mask.
    """
    ub, e = settings.n_ubatch, info.n_embd
    activations = 4 * e * ub * 4
    if settings.flash_attn:
        return n_kv * ub * 2 + activations
    return n_kv * ub * info.n_head * 4 + n_kv * ub * 4 + activations


def _ffn_stage(info: ModelInfo, settings: RunSettings) -> int:
    ub, e = settings.n_ubatch, info.n_embd
    return 2 * info.n_ff * ub * 4 + 2 * e * ub * 4


def _logits_stage(info: ModelInfo, settings: RunSettings) -> int:
    """H200: (152,064 + 3,584) x 512 x 4 = 304.00 MiB, the measured CUDA0 compute buffer at
    n_ubatch 512 (1216.00 at 2048) whenever the output layer is on the GPU."""
    return (info.n_vocab + info.n_embd) * settings.n_ubatch * 4


def gpu_compute_bytes(
    info: ModelInfo,
    settings: RunSettings,
    n_kv: int | None,
    *,
    holds_output: bool,
    input_from_elsewhere: bool,
    pipeline_parallel: bool,
) -> int:
    """The compute buffer of one GPU; ``n_kv`` is the largest KV cache among its repeating layers
    (None when it holds none).

    The buffer is the peak over the graph's stages on that device (ggml-alloc reuses memory
    between stages). A device whose first layer's input comes from another backend (CPU layers
    or a previous GPU) holds one more n_embd x n_ubatch f32 copy: H200, n_gpu_layers 14:
    304 + 7 = 311.00 MiB measured. With pipeline parallelism the scheduler keeps PIPELINE_COPIES
    copies of such inputs (not measured on several GPUs: this term is an upper estimate).
    """
    stages = []
    if holds_output:
        stages.append(_logits_stage(info, settings))
    if n_kv is not None:
        stages.append(_attention_stage(info, settings, n_kv))
        stages.append(_ffn_stage(info, settings))
    peak = max(stages, default=0)
    input_copy = info.n_embd * settings.n_ubatch * 4
    copies = PIPELINE_COPIES if pipeline_parallel else 1
    if input_from_elsewhere:
        peak += input_copy * copies
    elif pipeline_parallel:
        peak += input_copy * (copies - 1)
    return peak


def host_compute_bytes(info: ModelInfo, settings: RunSettings, *, cpu_layers: Sequence[int], output_on_cpu: bool) -> int:
    """The host compute buffer: CPU_Host beside GPUs, or the whole graph on a CPU-only model.

    Beside a GPU it holds the KQ mask and the layer inputs: H200 with flash attention
    (f16 mask): 4 + 14.01 = 18.01 MiB at n_ctx 4096, 128 + 14.01 = 142.01 at 131072; without (f32
    mask) 8 + 16 = 24.01 at 4096. CPU layers run their stages there as well.
    """
    ub, e = settings.n_ubatch, info.n_embd
    n_kv = pad256(settings.n_ctx)
    mask = n_kv * ub * (2 if settings.flash_attn else 4)
    stages = [mask + 2 * e * ub * 4]
    cells = kv_cells(info, settings)
    if cpu_layers:
        stages.append(_attention_stage(info, settings, max(cells[il] for il in cpu_layers)))
        stages.append(_ffn_stage(info, settings))
    if output_on_cpu:
        # CPU: (262,144 + 2 x 640) x 512 x 4 = 514.50 MiB for Gemma 3 270M, as printed, at any
        # n_ctx up to 32768 with or without flash attention; 257.25 at n_ubatch 256.
        stages.append(_logits_stage(info, settings) + e * ub * 4)
    return max(stages)


def _repackable_bytes(info: ModelInfo, layers: Sequence[int], output: bool, repack_types: frozenset[int]) -> int:
    if not info.tensors:
        return 0
    wanted = {f"blk.{il}." for il in layers}
    total = 0
    for t in info.tensors:
        in_layer = t.name.startswith("blk.") and t.name[: t.name.index(".", 4) + 1] in wanted
        is_output = output and t.name == "output.weight"
        if (in_layer or is_output) and t.ggml_type in repack_types and len(t.shape) >= 2 and t.shape[1] % 8 == 0:
            total += t.nbytes
    return total


def estimate_memory(
    info: ModelInfo,
    settings: RunSettings,
    assignment: Sequence[int | None],
    n_devices: int,
    costs: CudaCosts = CudaCosts(),
    *,
    replicas: int = 1,
    repack_types: frozenset[int] = X86_AVX2_REPACK_TYPES,
) -> MemoryEstimate:
    """Predict per-GPU and host memory for a layer assignment.

    ``assignment[il]`` is the device slot (0..n_devices-1, in CUDA_VISIBLE_DEVICES order) of
    layer il, or None for the CPU; index ``n_layers`` is the output layer. Every visible device
    pays the CUDA context even without layers (llama.cpp creates a backend on it). ``replicas``
    engines in one process share that context but not weights, KV or compute (H200: a second
    engine in the same process added 4698.0 MiB, not 5226.8).
    """
    n = info.n_layers
    kv = kv_layer_bytes(info, settings)
    cells = kv_cells(info, settings)
    growth = costs.growth_for(settings)
    gpu_layers = [il for il in range(n) if assignment[il] is not None]
    n_offloaded = len(gpu_layers) + (1 if assignment[n] is not None else 0)
    pipeline = n_devices > 1 and n_offloaded == n + 1 and settings.offload_kqv

    devices = []
    for d in range(n_devices):
        layers = [il for il in gpu_layers if assignment[il] == d]
        holds_output = assignment[n] == d
        weights = sum(info.layer_bytes[il] for il in layers)
        if holds_output:
            weights += info.output_layer_bytes + info.other_bytes
        kv_bytes = sum(kv[il] for il in layers) if settings.offload_kqv else 0
        if layers or holds_output:
            first = min(layers) if layers else n
            compute = gpu_compute_bytes(
                info,
                settings,
                max((cells[il] for il in layers), default=None),
                holds_output=holds_output,
                input_from_elsewhere=first > 0,
                pipeline_parallel=pipeline,
            )
            dev_growth = growth
        elif d == 0 and n_offloaded == 0:
            # n_gpu_layers = 0 with a visible GPU: op offload copies the CPU weights of large
            # prompt matmuls to it, the output matrix being the largest. H200: 304 + 426.36 =
            # 730.36 MiB measured, and it grew by 88 MiB like any engine.
            compute = _logits_stage(info, settings) + info.output_layer_bytes - info.output_norm_bytes
            dev_growth = growth
        else:
            compute, dev_growth = 0, 0
        devices.append(
            DeviceMemory(
                layers=len(layers) + (1 if holds_output else 0),
                weights_bytes=weights * replicas,
                kv_bytes=kv_bytes * replicas,
                compute_bytes=compute * replicas,
                overhead_bytes=costs.overhead_bytes,
                growth_bytes=dev_growth * replicas,
            )
        )

    cpu_layers = [il for il in range(n) if assignment[il] is None]
    output_on_cpu = assignment[n] is None
    mapped = info.token_embd_bytes + sum(info.layer_bytes[il] for il in cpu_layers)
    if output_on_cpu:
        mapped += (info.output_bytes or 0) + info.output_norm_bytes + info.other_bytes
    repack = _repackable_bytes(info, cpu_layers, output_on_cpu, repack_types)
    host_kv = sum(kv[il] for il in (range(n) if not settings.offload_kqv else cpu_layers))
    output_buffer = info.n_vocab * 4 + (info.n_embd * 4 if settings.embedding else 0)
    host = HostMemory(
        mapped_bytes=mapped,
        repack_bytes=repack * replicas,
        kv_bytes=host_kv * replicas,
        compute_bytes=host_compute_bytes(info, settings, cpu_layers=cpu_layers, output_on_cpu=output_on_cpu) * replicas,
        output_bytes=output_buffer * replicas,
    )
    return MemoryEstimate(devices=tuple(devices), host=host)
