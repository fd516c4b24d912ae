"""BER-TLV as the PIV applet speaks it (ISO 7816-4 tags of one to three bytes, definite lengths)."""

from __future__ import annotations


def encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n <= 0xFF:
        return bytes([0x81, n])
    if n <= 0xFFFF:
        return bytes([0x82]) + n.to_bytes(2, "big")
    raise ValueError(f"TLV value too long: {n} bytes")


def tlv(tag: int, value: bytes = b"") -> bytes:
    """One TLV; `tag` is the whole tag as an integer (0x7F49 is two bytes)."""
    size = max(1, (tag.bit_length() + 7) // 8)
    return tag.to_bytes(size, "big") + encode_length(len(value)) + value


def parse(data: bytes) -> list[tuple[int, bytes]]:
    """Every TLV at the top level of `data`, in order; raises ValueError on a truncated one."""
    out: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data):
        tag = data[i]
        i += 1
        if tag & 0x1F == 0x1F:  # multi-byte tag: more bytes while b8 is set
            while True:
                if i >= len(data):
                    raise ValueError("truncated TLV tag")
                tag = (tag << 8) | data[i]
                i += 1
                if not data[i - 1] & 0x80:
                    break
        if i >= len(data):
            raise ValueError("truncated TLV length")
        length = data[i]
        i += 1
        if length & 0x80:
            count = length & 0x7F
            if count == 0 or count > 3 or i + count > len(data):
                raise ValueError("bad TLV length")
            length = int.from_bytes(data[i : i + count], "big")
            i += count
        if i + length > len(data):
            raise ValueError("truncated TLV value")
        out.append((tag, data[i : i + length]))
        i += length
    return out


def parse_dict(data: bytes) -> dict[int, bytes]:
    return dict(parse(data))


def unwrap(tag: int, data: bytes) -> bytes:
    """The value of `data`, which must be exactly one TLV with `tag`."""
    items = parse(data)
    if len(items) != 1 or items[0][0] != tag:
        raise ValueError(f"expected one TLV with tag {tag:#x}")
    return items[0][1]
