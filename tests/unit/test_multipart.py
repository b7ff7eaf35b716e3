"""app/api/multipart.py: the text fields of multipart bodies, good and bad, from several encoders, and a fuzz."""

from __future__ import annotations

import os
import random
import time

import httpx2
import openai
import pytest
import requests
from urllib3 import encode_multipart_formdata

from app.dialects.multipart import MAX_PARTS, form_fields, parts
from app.errors import ApiError

B = "b0undary"
CT = f"multipart/form-data; boundary={B}"
WANTED = frozenset({"model", "stream"})


def field(name: bytes, value: bytes, extra: bytes = b"") -> bytes:
    return (
        b"--"
        + B.encode()
        + b'\r\nContent-Disposition: form-data; name="'
        + name
        + b'"'
        + extra
        + b"\r\n\r\n"
        + value
        + b"\r\n"
    )


def form(*fields: bytes) -> bytes:
    return b"".join(fields) + b"--" + B.encode() + b"--\r\n"


MODEL = field(b"model", b"whisper-1")
AUDIO = field(b"file", b"RIFF\r\n--b0und\x00\xff" * 50, b'; filename="a.wav"\r\nContent-Type: audio/wav')


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (form(MODEL, field(b"stream", b"true"), AUDIO), CT, {"model": "whisper-1", "stream": "true"}),
        (form(AUDIO, MODEL), CT, {"model": "whisper-1"}),  # order does not matter
        (form(MODEL, field(b"prompt", b"x" * 100_000)), CT, {"model": "whisper-1"}),  # unwanted: not kept
        (form(field(b"model", "mödel-ü".encode())), CT, {"model": "mödel-ü"}),
        (form(field(b"model", b"")), CT, {"model": ""}),
        (form(field(b"model", b"a\r\nb")), CT, {"model": "a\r\nb"}),  # a line break inside a value
        (form(field(b"mo\x00del", b"x"), MODEL), CT, {"model": "whisper-1"}),  # NUL in an unwanted name
        (form(field(b"model", b"x", b'; filename="model.txt"')), CT, {}),  # a file is not a text field
        (form(), CT, {}),  # no parts at all
        (b"preamble\r\n" + form(MODEL) + b"epilogue", CT, {"model": "whisper-1"}),
        (form(MODEL), f'Multipart/Form-Data; boundary="{B}"; charset=utf-8', {"model": "whisper-1"}),
        (form(MODEL).replace(b"\r\n", b"\n"), CT, {"model": "whisper-1"}),  # bare LF, as some clients send
        (
            form(MODEL).replace(B.encode(), b"x" * 200),
            "multipart/form-data; boundary=" + "x" * 200,
            {"model": "whisper-1"},
        ),
    ],
)
def test_good_bodies(body, content_type, expected):
    assert form_fields(body, content_type, wanted=WANTED) == expected


LONG = "x" * 201


@pytest.mark.parametrize(
    ("body", "content_type", "status", "param"),
    [
        (form(MODEL), "application/json", 415, None),
        (form(MODEL), "", 415, None),
        (form(MODEL), "multipart/mixed; boundary=b0undary", 415, None),
        (form(MODEL), "multipart/form-data", 400, None),  # no boundary
        (form(MODEL), "multipart/form-data; boundary=", 400, None),
        (form(MODEL), f"multipart/form-data; boundary={LONG}", 400, None),  # RFC 2046 says 70; 200 allowed
        (form(MODEL).replace(B.encode(), LONG.encode()), f"multipart/form-data; boundary={LONG}", 400, None),
        (form(MODEL), "multipart/form-data; boundary=b0und{ary", 400, None),  # not an RFC 2046 character
        (form(MODEL), "multipart/form-data; boundary=other", 400, None),  # not the body's boundary
        (b"", CT, 400, None),
        (b"garbage", CT, 400, None),
        (b"\x00" * 1000, CT, 400, None),
        (form(MODEL)[:-4], CT, 400, None),  # no closing "--"
        (MODEL, CT, 400, None),  # no closing boundary at all
        (form(MODEL, AUDIO)[:300], CT, 400, None),  # truncated inside a file
        (form(MODEL)[:30], CT, 400, None),  # truncated inside the headers
        (form(MODEL).replace(b"Content-Disposition", b"Content-Type"), CT, 400, None),
        (form(field(b"", b"x")), CT, 400, None),  # a part without a name
        (form(MODEL.replace(b"form-data;", b"form-data; x=" + b"a" * 100_000 + b";")), CT, 400, None),  # huge header
        (b"--" + B.encode() + b"\r\nX: " + b"a" * 10_000_000, CT, 400, None),  # headers that never end
        (form(field(b"model", b"\xff\xfe")), CT, 400, "model"),  # not UTF-8
        (form(field(b"model", b"a\x00b")), CT, 400, "model"),  # NUL in a wanted value
        (form(MODEL, field(b"model", b"other")), CT, 400, "model"),  # a wanted field twice
        (form(*[field(b"f", b"")] * (MAX_PARTS + 1)), CT, 400, None),
    ],
)
def test_bad_bodies(body, content_type, status, param):
    with pytest.raises(ApiError) as caught:
        form_fields(body, content_type, wanted=WANTED)
    error = caught.value
    assert (error.status, error.param) == (status, param)
    assert error.code == ("unsupported_media_type" if status == 415 else "invalid_multipart")


def test_parts_counts_files_and_keeps_only_wanted_text():
    body = form(MODEL, AUDIO, field(b"prompt", b"hi"))
    found = parts(body, CT, keep=frozenset({"prompt"}))
    assert [(p.name, p.filename, p.content_type, p.size, p.value) for p in found] == [
        ("model", None, None, 9, None),
        ("file", "a.wav", "audio/wav", 50 * 15, None),
        ("prompt", None, None, 2, b"hi"),
    ]
    assert [p.value for p in parts(body, CT)] == [b"whisper-1", None, b"hi"]  # keep=None: every text field


def test_urllib3_encoding():
    body, content_type = encode_multipart_formdata(
        [("model", "tts-1"), ("stream", "false"), ("file", ("a.mp3", b"ID3" * 1000, "audio/mpeg"))]
    )
    assert form_fields(body, content_type, wanted=WANTED) == {"model": "tts-1", "stream": "false"}


def test_requests_encoding():
    prepared = requests.Request(
        "POST", "http://x/", data={"model": "whisper-1"}, files={"file": ("a.wav", b"RIFF" * 100)}
    ).prepare()
    assert form_fields(prepared.body, prepared.headers["Content-Type"], wanted=WANTED) == {"model": "whisper-1"}


def test_openai_sdk_encoding():
    seen: dict = {}

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen["content_type"], seen["body"] = request.headers["content-type"], request.read()
        return httpx2.Response(200, json={"text": "x"})

    transport = httpx2.Client(transport=httpx2.MockTransport(handler))
    with openai.OpenAI(api_key="k", base_url="http://x/v1", http_client=transport) as client:
        client.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=("a.wav", b"RIFF" * 100, "audio/wav"), include=["logprobs"]
        )
    fields = form_fields(seen["body"], seen["content_type"], wanted=frozenset({"model", "include[]"}))
    assert fields == {"model": "gpt-4o-transcribe", "include[]": "logprobs"}


def test_ten_megabytes_are_fast():
    body, content_type = encode_multipart_formdata(
        [("model", "whisper-1"), ("file", ("a.wav", os.urandom(10 * 1024 * 1024), "audio/wav"))]
    )
    started = time.perf_counter()
    assert form_fields(body, content_type, wanted=WANTED) == {"model": "whisper-1"}
    assert time.perf_counter() - started < 1.0  # ~10 ms here; the decoder never holds more than a slice


def test_fuzz_never_escapes_an_apierror():
    rng = random.Random(11)
    body, content_type = encode_multipart_formdata(
        [("model", "whisper-1"), ("stream", "true"), ("file", ("a.wav", os.urandom(2000), "audio/wav"))]
    )
    pieces = [b"\r", b"\n", b"\r\n", b"--", b"\x00", b":", b";", b'"', b"\xff", content_type[30:].encode()]
    for _ in range(3000):
        mutated = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(mutated) + 1)
            choice = rng.random()
            if choice < 0.3:
                del mutated[at : at + rng.randint(1, 60)]
            elif choice < 0.7:
                mutated[at:at] = rng.choice(pieces)
            else:
                mutated = mutated[:at]
        try:
            fields = form_fields(bytes(mutated), content_type, wanted=WANTED)
        except ApiError as error:
            assert (error.status, error.code) == (400, "invalid_multipart")
        else:
            assert set(fields) <= WANTED
