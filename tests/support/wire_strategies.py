"""Hypothesis strategies for wire frames, shared by the wire tests."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st

from pigeonpush.wire.codec import MIN_MAX_FRAME, SUPPORTED_VERSIONS
from pigeonpush.wire.frames import (
    PING,
    PONG,
    Ack,
    Auth,
    AuthFail,
    AuthFailCode,
    AuthOk,
    Error,
    ErrorCode,
    Frame,
    Kick,
    KickReason,
    Nack,
    Push,
)

#: Property tests check behaviour, not speed: no per-example deadline, which a
#: busy machine could miss.
untimed = settings(deadline=None)

# Strings of any Unicode scalar value (hypothesis leaves surrogates out, as UTF-8 does).
texts = st.text(max_size=40)
uint32_positive = st.integers(min_value=1, max_value=0xFFFFFFFF)
extras_maps = st.dictionaries(texts, texts, max_size=5)

pushes = st.builds(Push, texts, texts, texts, extras_maps)
frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(Auth, texts, texts, st.sampled_from(sorted(SUPPORTED_VERSIONS))),
    st.builds(
        AuthOk,
        uint32_positive.map(lambda ms: ms / 1000),
        st.integers(min_value=MIN_MAX_FRAME, max_value=0xFFFFFFFF),
        uint32_positive,
    ),
    st.builds(AuthFail, st.sampled_from(AuthFailCode), texts),
    st.just(PING),
    st.just(PONG),
    pushes,
    st.builds(Ack, texts),
    st.builds(Kick, st.sampled_from(KickReason), texts),
    st.builds(Error, st.sampled_from(ErrorCode), texts),
    st.builds(Nack, texts, st.integers(0, 0xFFFFFFFF).map(lambda ms: ms / 1000)),
)
