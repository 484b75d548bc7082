"""What llama.cpp (as vendored in llama-cpp-python 0.3.36) allocates for a model on each device.

Every formula cites the figure it was calibrated on: ``H200`` rows are the H200 measurements
of docs/calibration.md#h200-measurements (a Qwen2 7B Q4_K_M shape: n_embd 3584, 28 heads,
vocab 152,064), ``CPU`` figures from llama-cpp-python's own buffer lines on this project's test
models (tests/unit/planner/test_memory_vs_llama.py checks them on every run; machine and
versions in docs/calibration.md#sources). Sizes are bytes.

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
from planner.units import MIB

# H200, every row: NVML delta minus (model + KV + compute) was 528-533 MiB per process per GPU
# (docs/calibration.md#cuda-context).
DEFAULT_CUDA_OVERHEAD_MIB = 530
# H200: NVML grew by 86 MiB (flash attention; 88 at n_gpu_layers = 0) / 184 MiB (without) after
# a 512-token prompt and 128 generated tokens (docs/calibration.md#growth-after-the-first-requests).
GROWTH_FLASH_ATTN_MIB = 86
GROWTH_NO_FLASH_ATTN_MIB = 184
# llama.cpp's ggml_backend_sched keeps this many copies of split inputs when pipeline
# parallelism is on (several GPUs, full offload): GGML_SCHED_MAX_COPIES.
PIPELINE_COPIES = 4

# The KV cache types llama.cpp accepts (common/arg.cpp kv_cache_types); the config's type_k and
# type_v take their names from here. The quantized ones (block size > 1) need flash attention
# for V.
KV_TYPES: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")
QUANTIZED_KV_TYPES: frozenset[str] = frozenset(
    t for t in KV_TYPES if GGML_QUANT_SIZES[GGMLQuantizationType[t.upper()]][0] > 1
)
# llama-cparams.h LLAMA_MAX_SEQ: the most sequences one context holds (n_seq_max).
LLAMA_MAX_SEQ = 256
# llama-context.cpp pads the context (and each stream's share of it) to this many cells.
KV_PAD = 256

# Weight types that ggml-cpu repacks into a second CPU_REPACK buffer on x86 with AVX2
# (ggml/src/ggml-cpu/repack.cpp, ggml_repack_get_optimal_repack_type): Q4_0, Q4_K, IQ4_NL and
# MXFP4 when the row count is a multiple of 8. Q2_K joins them with AVX-512.
X86_AVX2_REPACK_TYPES = frozenset(
    {GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_K, GGMLQuantizationType.IQ4_NL, GGMLQuantizationType.MXFP4}
)


@dataclass(frozen=True)
class RunSettings:
    """The context parameters of one llama.cpp context (llama-cpp-python's names).

    One context serves ``slots`` sequences at once (llama.cpp's ``n_seq_max``), each of up to
    ``n_ctx`` tokens. Without ``kv_unified`` llama.cpp gives every sequence its own stream of
    the KV cache (``kv_cells // slots`` cells each); with it the sequences share one pool of
    ``kv_cells``. ``kv_pool_tokens`` is that total (llama.cpp's context ``n_ctx``); None means
    ``n_ctx * slots``, every slot keeping its full context.
    """

    n_ctx: int = 4096  # tokens per sequence (slot)
    n_batch: int = 512
    n_ubatch: int = 512
    flash_attn: bool = False
    type_k: str = "f16"
    type_v: str = "f16"
    swa_full: bool = False
    offload_kqv: bool = True
    embedding: bool = False
    use_mmap: bool = True
    slots: int = 1
    kv_unified: bool = False
    kv_pool_tokens: int | None = None

    @property
    def kv_cells(self) -> int:
        """The context's total cells as asked for (llama.cpp's n_ctx; it pads them to 256)."""
        return self.kv_pool_tokens if self.kv_pool_tokens is not None else self.n_ctx * self.slots

    @property
    def streams(self) -> int:
        """KV streams: one per sequence, or one shared by all with kv_unified."""
        return 1 if self.kv_unified else self.slots

    @property
    def stream_cells(self) -> int:
        """Cells of one stream (llama.cpp's ``n_ctx_seq``), as llama-context.cpp rounds them.

        The context is padded to 256 cells; without kv_unified each sequence's share is padded
        to 256 again, so every slot gets ``pad256(n_ctx)``: 4 slots of n_ctx 4096 make a 16384-
        cell context of four 4096-cell streams (Gemma 3 270M, CPU: 4/4 seqs, 48.00 MiB).
        """
        total = pad256(self.kv_cells)
        return total if self.kv_unified else pad256(total // self.slots)

    @property
    def ubatch(self) -> int:
        """The micro-batch llama.cpp uses, and the outputs of the worst-case batch: n_ubatch
        capped by n_batch, which the worker caps by one sequence's n_ctx as llama-cpp-python
        does; llama.cpp caps it by the whole context."""
        return min(self.n_ubatch, self.n_batch, self.n_ctx, self.kv_cells)

    @property
    def ubatch_tokens(self) -> int:
        """Tokens of the worst-case batch llama.cpp reserves its compute graph for: as many in
        each of the n_seq_max sequences, so ``ubatch`` rounded up to a multiple of ``slots``
        (llama-context.cpp graph_reserve)."""
        return -(-self.ubatch // self.slots) * self.slots


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
    # What the model was measured to need beyond this estimate at an earlier load (the gateway
    # learns it: gateway.placement.learning); 0 for a model never measured over its estimate.
    learned_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes + self.overhead_bytes + self.growth_bytes + self.learned_bytes


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
    return (n + KV_PAD - 1) // KV_PAD * KV_PAD


def layer_kv_cells(info: ModelInfo, settings: RunSettings) -> list[int]:
    """Cells of each layer's KV cache in one stream (multiply by ``settings.streams``).

    Full-attention layers get the stream's cells (``RunSettings.stream_cells``).
    llama-kv-cache-iswa.cpp gives sliding-window layers
    ``pad256(min(stream, n_swa * (slots if kv_unified else 1) + n_ubatch))`` cells unless
    swa_full, which makes them full size (llama.cpp's default; we default to False): one window
    per sequence, in its own stream or together in the shared pool. Gemma 3 270M at n_ctx
    32768: 576 vs 111 MiB; 8 unified slots of 4096: 4608 SWA cells (CPU: 67.50 MiB).
    """
    full = settings.stream_cells
    windows = info.sliding_window * (settings.slots if settings.kv_unified else 1)
    swa = full if settings.swa_full else pad256(min(full, windows + settings.ubatch))
    return [swa if is_swa else full for is_swa in info.swa_layers]


def kv_layer_bytes(info: ModelInfo, settings: RunSettings) -> list[int]:
    """KV bytes per repeating layer: streams x cells x (row(type_k, n_embd_k_gqa) + row(type_v, n_embd_v_gqa)).

    H200: 28 layers x 4 KV heads x 128 dims, f16, n_ctx 4096 -> 224 MiB; 32768 -> 1792 MiB.
    """
    tk, tv = kv_type(settings.type_k), kv_type(settings.type_v)
    cells = layer_kv_cells(info, settings)
    return [
        settings.streams * cells[il] * (row_bytes(tk, info.n_embd_k_gqa(il)) + row_bytes(tv, info.n_embd_v_gqa(il)))
        for il in range(info.n_layers)
    ]


def _masks(info: ModelInfo, settings: RunSettings, kinds: Sequence[bool]) -> int:
    """The KQ masks a device's layers read: one per kind of layer it holds (``kinds``: False for
    full attention, True for sliding window), each [cells, batch tokens], f16 with flash
    attention, else f32. They are graph inputs, alive from the first attention to the last.

    A sliding-window model has both (llama-graph.cpp build_attn_inp_kv_iswa), full size each
    with swa_full: tiny gemma3 test model, CPU, n_ctx 8192, swa_full, no flash attention:
    two masks of 16 MiB in a 97.76 MiB buffer.
    """
    cells = {is_swa: c for is_swa, c in zip(info.swa_layers, layer_kv_cells(info, settings))}
    per_cell = settings.ubatch_tokens * (2 if settings.flash_attn else 4)
    return sum(cells[k] for k in set(kinds) if k in cells) * per_cell


def _attention_stage(info: ModelInfo, settings: RunSettings, n_kv: int, masks: int) -> int:
    """Peak of an attention block for a batch over n_kv cells of each stream, beside ``masks``.

    Without flash attention the f32 scores (n_kv x n_ubatch x n_head) and an f32 mask dominate:
    H200 n_ctx 32768 -> 1792 + 64 + 28 = 1884 MiB predicted, 1886.01 measured. Flash attention
    needs no scores. With several streams each sequence's tokens attend to its own stream: the
    scores and the mask are [n_kv, tokens / streams, ., streams], the same n_kv x tokens in all
    (llama-graph.cpp build_attn_inp_kq_mask).
    """
    ub, e = settings.ubatch_tokens, info.n_embd
    activations = 4 * e * ub * 4
    if settings.flash_attn:
        return masks + activations
    return n_kv * ub * info.n_head * 4 + masks + activations


def _ffn_stage(info: ModelInfo, settings: RunSettings, masks: int) -> int:
    ub, e = settings.ubatch_tokens, info.n_embd
    return 2 * info.n_ff * ub * 4 + 2 * e * ub * 4 + masks


def _logits_stage(info: ModelInfo, settings: RunSettings) -> int:
    """H200: (152,064 + 3,584) x 512 x 4 = 304.00 MiB, the measured CUDA0 compute buffer at
    n_ubatch 512 (1216.00 at 2048) whenever the output layer is on the GPU. Every token of the
    worst-case batch is an output (llama-context.cpp sched_reserve: n_outputs = n_ubatch), so
    this does not grow with slots. The masks are freed by then (their last reader is done)."""
    return (info.n_vocab + info.n_embd) * settings.ubatch * 4


def _layer_stages(info: ModelInfo, settings: RunSettings, layers: Sequence[int]) -> list[int]:
    """The attention and FFN peaks of a set of repeating layers run on one device."""
    if not layers:
        return []
    cells = layer_kv_cells(info, settings)
    masks = _masks(info, settings, [info.swa_layers[il] for il in layers])
    n_kv = max(cells[il] for il in layers)
    return [_attention_stage(info, settings, n_kv, masks), _ffn_stage(info, settings, masks)]


def gpu_compute_bytes(
    info: ModelInfo,
    settings: RunSettings,
    layers: Sequence[int],
    *,
    holds_output: bool,
    input_from_elsewhere: bool,
    pipeline_parallel: bool,
) -> int:
    """The compute buffer of one GPU holding repeating ``layers`` (only which kinds of layer
    they are and their largest cache matter, see ``planner.plan``).

    The buffer is the peak over the graph's stages on that device (ggml-alloc reuses memory
    between stages). A device whose first layer's input comes from another backend (CPU layers
    or a previous GPU) holds one more n_embd x n_ubatch f32 copy: H200, n_gpu_layers 14:
    304 + 7 = 311.00 MiB measured. With pipeline parallelism the scheduler keeps PIPELINE_COPIES
    copies of such inputs (not measured on several GPUs: this term is an upper estimate).
    """
    stages = _layer_stages(info, settings, layers)
    if holds_output:
        stages.append(_logits_stage(info, settings))
    peak = max(stages, default=0)
    input_copy = info.n_embd * settings.ubatch_tokens * 4
    copies = PIPELINE_COPIES if pipeline_parallel else 1
    if input_from_elsewhere:
        peak += input_copy * copies
    elif pipeline_parallel:
        peak += input_copy * (copies - 1)
    return peak


def host_compute_bytes(info: ModelInfo, settings: RunSettings, *, cpu_layers: Sequence[int], output_on_cpu: bool) -> int:
    """The host compute buffer: CPU_Host beside GPUs, or the whole graph on a CPU-only model.

    Beside a GPU it holds the KQ masks (every graph input is set here) and the layer inputs:
    H200 with flash attention (f16 mask): 4 + 14.01 = 18.01 MiB at n_ctx 4096, 128 + 14.01 =
    142.01 at 131072; without (f32 mask) 8 + 16 = 24.01 at 4096. CPU layers run their stages
    there as well.
    """
    ub, e = settings.ubatch_tokens, info.n_embd
    masks = _masks(info, settings, info.swa_layers)
    stages = [masks + 2 * e * ub * 4]
    if cpu_layers:
        cells = layer_kv_cells(info, settings)
        n_kv = max(cells[il] for il in cpu_layers)
        stages += [_attention_stage(info, settings, n_kv, masks), _ffn_stage(info, settings, masks)]
    if output_on_cpu:
        # CPU: (262,144 + 2 x 640) x 512 x 4 = 514.50 MiB for Gemma 3 270M, as printed, at any
        # n_ctx up to 32768 with or without flash attention; 257.25 at n_ubatch 256.
        stages.append(_logits_stage(info, settings) + e * settings.ubatch * 4)
    return max(stages)


def output_buffer_bytes(info: ModelInfo, settings: RunSettings) -> int:
    """The logits (and embeddings) output buffer, reserved for one output per sequence.

    llama-context.cpp output_reserve(n_seq_max): n_seq_max x (n_vocab + n_embd with
    embeddings) floats. Gemma 3 270M (262,144 tokens), CPU: 1.00 MiB for 1 slot, 8.00 for 8.
    """
    per_output = info.n_vocab + (info.n_embd if settings.embedding else 0)
    return settings.slots * per_output * 4


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
    repack_types: frozenset[int] = X86_AVX2_REPACK_TYPES,
    learned_bytes: int = 0,
) -> MemoryEstimate:
    """Predict per-GPU and host memory of one model with one context for a layer assignment.

    ``assignment[il]`` is the device slot (0..n_devices-1, in CUDA_VISIBLE_DEVICES order) of
    layer il, or None for the CPU; index ``n_layers`` is the output layer. Every visible device
    pays the CUDA context even without layers (llama.cpp creates a backend on it). The weights
    are there once whatever ``settings.slots``; the slots cost KV cells (``kv_layer_bytes``),
    a larger output buffer and, through the batch shape, the compute buffers. ``learned_bytes``
    (measured beyond this estimate at an earlier load) is added to each GPU that computes.
    """
    n = info.n_layers
    kv = kv_layer_bytes(info, settings)
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
                layers,
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
        computes = bool(layers or holds_output or (d == 0 and n_offloaded == 0))
        devices.append(
            DeviceMemory(
                layers=len(layers) + (1 if holds_output else 0),
                weights_bytes=weights,
                kv_bytes=kv_bytes,
                compute_bytes=compute,
                overhead_bytes=costs.overhead_bytes,
                growth_bytes=dev_growth,
                learned_bytes=learned_bytes if computes else 0,
            )
        )

    cpu_layers = [il for il in range(n) if assignment[il] is None]
    output_on_cpu = assignment[n] is None
    mapped = info.token_embd_bytes + sum(info.layer_bytes[il] for il in cpu_layers)
    if output_on_cpu:
        mapped += (info.output_bytes or 0) + info.output_norm_bytes + info.other_bytes
    repack = _repackable_bytes(info, cpu_layers, output_on_cpu, repack_types)
    host_kv = sum(kv[il] for il in (range(n) if not settings.offload_kqv else cpu_layers))
    output_buffer = output_buffer_bytes(info, settings)
    host = HostMemory(
        mapped_bytes=mapped,
        repack_bytes=repack,
        kv_bytes=host_kv,
        compute_bytes=host_compute_bytes(info, settings, cpu_layers=cpu_layers, output_on_cpu=output_on_cpu),
        output_bytes=output_buffer,
    )
    return MemoryEstimate(devices=tuple(devices), host=host)
