"""The stream-decoder property both models' tests share: valid frames, corrupted ones, junk, random splits."""

from __future__ import annotations

from typing import List, Tuple

from hypothesis import strategies as st

from wattchecker_client.protocol import MAX_FRAME, FrameDecoder, crc8

junk = st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\xaa", b"\x55"))
cuts = st.lists(st.integers(0, 2000), max_size=20)


def corrupted(valid_frames: st.SearchStrategy) -> st.SearchStrategy:
    """A valid frame with one bit flipped in its payload or CRC byte.

    CRC-8 catches every single-bit error, so such a frame never passes. Its
    bytes after the sync hold no 0xAA, which could otherwise start a frame
    whose CRC matches by chance (1 in 256) and no 8-bit CRC can rule out.
    A corrupted length field has that same 1-in-256 chance against the
    bytes that follow, so it has tests of its own.
    """

    @st.composite
    def flip(draw):
        frame = bytearray(draw(valid_frames))
        bit = draw(st.integers(3 * 8, len(frame) * 8 - 1))
        frame[bit // 8] ^= 1 << (bit % 8)
        if 0xAA in frame[1:]:
            frame[1:] = bytes(b if b != 0xAA else 0xAB for b in frame[1:])
            good_crc = crc8(bytes(frame[3:-1]))
            frame[-1] = good_crc ^ (0x01 if good_crc ^ 0x01 != 0xAA else 0x02)
        return bytes(frame)

    return flip()


def pieces(valid_frames: st.SearchStrategy, *also_valid: st.SearchStrategy) -> st.SearchStrategy:
    """A stream's parts, each tagged valid, bad (corrupted) or junk."""
    return st.lists(
        st.one_of(
            *(s.map(lambda f: ("valid", f)) for s in (valid_frames, *also_valid)),
            corrupted(valid_frames).map(lambda f: ("bad", f)),
            junk.map(lambda f: ("junk", f)),
        ),
        max_size=30,
    )


def assert_only_valid_frames_come_out(parts: List[Tuple[str, bytes]], splits: List[int],
                                      decoder: FrameDecoder) -> None:
    """Fed in arbitrary pieces, the decoder yields exactly the valid payloads, in order, and holds little."""
    stream = b"".join(data for _, data in parts)
    got = []
    start = 0
    for cut in sorted(set(c for c in splits if c < len(stream))) + [len(stream)]:
        decoder.feed(stream[start:cut])
        got.extend(f.payload for f in decoder)
        assert decoder.buffered < MAX_FRAME
        start = cut
    assert got == [data[3:-1] for kind, data in parts if kind == "valid"]
    assert decoder.crc_errors == sum(1 for kind, _ in parts if kind == "bad")
    assert decoder.buffered == 0
