"""Byte units."""

MIB = 1024 * 1024
GIB = 1024 * MIB


def parse_size(text: str) -> int:
    """Bytes in a size such as ``24GiB``, ``512MiB``, ``12GB`` or ``1.5GiB``."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError("must be a size such as 24GiB, 512MiB or 12GB")
    units = {"b": 1, "kib": 1024, "mib": MIB, "gib": GIB, "tib": 1024 * GIB, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
    return int(float(m.group(1)) * units[(m.group(2) or "B").lower()])
