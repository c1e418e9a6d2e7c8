"""The byte layout of TFRecord files, for tests that cut or damage a shard."""


def record_offsets(path):
    """Start offsets of each record (TFRecord: u64 length, u32 crc, data, u32)."""
    data, offsets, pos = path.read_bytes(), [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += 8 + 4 + int.from_bytes(data[pos : pos + 8], "little") + 4
    return data, offsets
