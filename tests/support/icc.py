"""A minimal ICC v2 RGB display profile built byte by byte, for tests of colour handling: no
profile file ships with the machine or the test dependencies."""

from __future__ import annotations

import struct

Xyz = tuple[float, float, float]
# sRGB's primaries as its ICC profile gives them (XYZ, adapted to D50).
SRGB_RED: Xyz = (0.4361, 0.2225, 0.0139)
SRGB_GREEN: Xyz = (0.3851, 0.7169, 0.0971)
SRGB_BLUE: Xyz = (0.1431, 0.0606, 0.7141)


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def rgb_profile(red: Xyz, green: Xyz, blue: Xyz) -> bytes:
    """A minimal ICC v2 RGB display profile: these primaries (XYZ, D50), linear curves."""
    text = b"test primaries\0"
    desc = (
        b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0\0\0" + b"\0" * 67
    )
    curve = b"curv\0\0\0\0" + struct.pack(">I", 0)
    tags = [
        (b"desc", desc),
        (b"wtpt", _xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", _xyz(*red)),
        (b"gXYZ", _xyz(*green)),
        (b"bXYZ", _xyz(*blue)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (
        struct.pack(">I", size)
        + b"\0" * 4
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + b"\0" * 12
        + b"acsp"
        + b"\0" * 24
        + struct.pack(">I", 0)
        + _s15(0.9642)
        + _s15(1.0)
        + _s15(0.8249)
        + b"\0" * 48
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data
