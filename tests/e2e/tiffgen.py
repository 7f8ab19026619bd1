"""Write a 16-bit RGB baseline TIFF (uncompressed) without any imaging library."""
import random
import struct


def write_tiff16(path, width=640, height=480, seed=1):
    rng = random.Random(seed)
    # A smooth gradient with a little noise: looks like a photo to a JPEG encoder.
    rows = []
    for y in range(height):
        row = bytearray()
        for x in range(width):
            r = (x * 65535 // width + rng.randrange(512)) & 0xFFFF
            g = (y * 65535 // height + rng.randrange(512)) & 0xFFFF
            b = ((x + y) * 65535 // (width + height)) & 0xFFFF
            row += struct.pack("<HHH", r, g, b)
        rows.append(bytes(row))
    pixels = b"".join(rows)
    entries = []

    def tag(t, typ, count, value):
        entries.append((t, typ, count, value))

    n_entries = 11
    ifd_off = 8
    ifd_size = 2 + n_entries * 12 + 4
    bps_off = ifd_off + ifd_size
    data_off = bps_off + 6
    tag(256, 4, 1, width)             # ImageWidth
    tag(257, 4, 1, height)            # ImageLength
    tag(258, 3, 3, bps_off)           # BitsPerSample -> 16,16,16
    tag(259, 3, 1, 1)                 # Compression: none
    tag(262, 3, 1, 2)                 # Photometric: RGB
    tag(273, 4, 1, data_off)          # StripOffsets
    tag(277, 3, 1, 3)                 # SamplesPerPixel
    tag(278, 4, 1, height)            # RowsPerStrip
    tag(279, 4, 1, len(pixels))       # StripByteCounts
    tag(284, 3, 1, 1)                 # PlanarConfiguration: chunky
    tag(339, 3, 1, 1)                 # SampleFormat: unsigned
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_off))
    out += struct.pack("<H", n_entries)
    for t, typ, count, value in entries:
        if typ == 3 and count == 1:
            out += struct.pack("<HHIHH", t, typ, count, value, 0)
        else:
            out += struct.pack("<HHII", t, typ, count, value)
    out += struct.pack("<I", 0)
    out += struct.pack("<HHH", 16, 16, 16)
    assert len(out) == data_off
    out += pixels
    with open(path, "wb") as f:
        f.write(out)
