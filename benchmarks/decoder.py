"""Decoder throughput: frames/s over a 10 MB stream with 10 % junk, and the peak buffer.

Run: .venv/bin/python benchmarks/decoder.py [--mb 10] [--chunk 4096]
Prints figures; asserts nothing. Junk is random bytes (0xAA included), so
false syncs and CRC rejections are exercised too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import time

from wattchecker_client import protocol
from wattchecker_client.protocol import FrameDecoder, Measurement


def build_stream(size: int, junk_fraction: float, rng: random.Random) -> tuple:
    parts = []
    total = frames = junk = 0
    start = dt.datetime(2026, 1, 1)
    while total < size:
        if rng.random() < junk_fraction * 21 / (21 * (1 - junk_fraction) + junk_fraction * 21):
            piece = bytes(rng.randrange(256) for _ in range(21))
            junk += len(piece)
        else:
            m = Measurement(
                start + dt.timedelta(seconds=frames),
                rng.uniform(95, 105),
                rng.uniform(0, 15000),
                rng.uniform(0, 1500),
            )
            piece = protocol.encode_frame(protocol.measurement_payload(m))
            frames += 1
        parts.append(piece)
        total += len(piece)
    return b"".join(parts), frames, junk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=10.0)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--junk", type=float, default=0.10)
    args = parser.parse_args()
    stream, sent, junk = build_stream(int(args.mb * 1_000_000), args.junk, random.Random(1))
    decoder = FrameDecoder()
    decoded = 0
    begin = time.perf_counter()
    for offset in range(0, len(stream), args.chunk):
        decoder.feed(stream[offset : offset + args.chunk])
        for _ in decoder:
            decoded += 1
    elapsed = time.perf_counter() - begin
    print(f"stream: {len(stream) / 1e6:.1f} MB, {sent} valid frames, {junk / len(stream):.1%} junk, "
          f"fed in {args.chunk}-byte reads")
    print(f"decoded {decoded} frames ({decoded - sent:+d} vs sent) in {elapsed:.2f} s: "
          f"{decoded / elapsed:,.0f} frames/s, {len(stream) / elapsed / 1e6:.1f} MB/s")
    print(f"crc rejections {decoder.crc_errors}, bad lengths {decoder.bad_lengths}, "
          f"junk bytes skipped {decoder.junk_bytes}")
    print(f"peak bytes held between feeds: {decoder.peak_buffer} (bound {protocol.MAX_FRAME - 1}); "
          f"a meter at 1 Hz needs 1 frame/s, so this is {decoded / elapsed:,.0f}x headroom")


if __name__ == "__main__":
    main()
