"""vram-gateway's planner: a pure library.

GGUF header reading, device inventories, memory estimation, packing and tensor_split. Functions
take data and return data; nothing here imports a web framework or llama_cpp, logs, or keeps
global state.
"""
