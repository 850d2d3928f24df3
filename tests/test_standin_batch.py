"""Contract tests of the stand-in's Gemini Files API + Batch API (tests/standin/batch.py).

1. google-genai drives it end to end (upload, create, get, list pages, cancel, delete,
   download) and parses every answer into its typed objects; each result line is a
   valid ``types.GenerateContentResponse`` and equals what the synchronous call answers.
2. Raw ``requests`` pin the wire details the SDK hides: the resumable protocol,
   int64-string ``batchStats`` (zero counts left out, or none at all), error lines as
   google.rpc.Status with gRPC codes, create-time JSONL validation, the 40-character
   file-id limit, paging, auth, and the hold points kill tests rely on.

Nothing here waits on wall-clock time: job progress is counted in polls and held steps
are released explicitly.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading

import pytest
import requests
from google import genai
from google.genai import _api_client
from google.genai import errors as genai_errors
from google.genai import types
from PIL import Image

from tests.standin import DEFAULT_API_KEY, B
from tests.standin.batch import TYPE_BATCH, TYPE_OUTPUT, BatchBehaviour

pytest_plugins = ["tests.standin.fixtures"]

KEY = DEFAULT_API_KEY
MODEL = "gemini-3-pro-image-preview"
AUTH = {"x-goog-api-key": KEY}


def _jpeg(w=200, h=100, colour=None) -> bytes:
    buf = io.BytesIO()
    im = Image.new("RGB", (w, h), colour) if colour else Image.linear_gradient("L").resize((w, h)).convert("RGB")
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


JPEG = _jpeg()


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def request_body(prompt: str, *, image: bytes = JPEG, image_size=None, aspect=None, snake=False) -> dict:
    img_cfg = {}
    if image_size:
        img_cfg["imageSize"] = image_size
    if aspect:
        img_cfg["aspectRatio"] = aspect
    gen = {"responseModalities": ["IMAGE"]}
    if img_cfg:
        gen["imageConfig"] = img_cfg
    body = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"inlineData": {"mimeType": "image/jpeg", "data": base64.b64encode(image).decode()}},
                    {"text": prompt},
                ],
            }
        ]
    }
    body["generation_config" if snake else "generationConfig"] = gen
    return body


def jsonl(*lines) -> bytes:
    return "".join(json.dumps(ln) + "\n" for ln in lines).encode()


def line(key: str, prompt: str, **kw) -> dict:
    return {"key": key, "request": request_body(prompt, **kw)}


def upload(standin, data: bytes, display="input.jsonl", mime="application/jsonl") -> dict:
    """The resumable upload in one finalize chunk, by hand; returns the File."""
    start = requests.post(
        f"{standin.url}/upload/v1beta/files",
        json={"file": {"display_name": display}},
        timeout=10,
        headers={
            **AUTH,
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(len(data)),
            "X-Goog-Upload-Header-Content-Type": mime,
        },
    )
    assert start.status_code == 200, start.text
    r = requests.post(
        start.headers["X-Goog-Upload-URL"],
        data=data,
        timeout=10,
        headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
    )
    assert r.status_code == 200 and r.headers["X-Goog-Upload-Status"] == "final", r.text
    return r.json()["file"]


def create(standin, file_name: str, display="job", model=MODEL) -> requests.Response:
    return requests.post(
        f"{standin.gemini_base_url}/models/{model}:batchGenerateContent",
        headers=AUTH,
        timeout=30,
        json={"batch": {"display_name": display, "input_config": {"file_name": file_name}}},
    )


def get(standin, name: str) -> dict:
    r = requests.get(f"{standin.gemini_base_url}/{name}", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def download(standin, file_name: str) -> list[dict]:
    r = requests.get(
        f"{standin.url}/download/v1beta/{file_name}:download", params={"alt": "media"}, headers=AUTH, timeout=30
    )
    assert r.status_code == 200, r.text
    return [json.loads(x) for x in r.text.splitlines()]


def run_batch(standin, *lines_, polls=0) -> tuple[dict, list[dict]]:
    """Upload, create (finished at creation) and download: (operation, result lines)."""
    standin.set_batch_behaviour("succeed", polls=polls)
    f = upload(standin, jsonl(*lines_))
    op = create(standin, f["name"]).json()
    done = get(standin, op["name"])
    assert done["done"] is True, done
    return done, download(standin, done["metadata"]["output"]["responsesFile"])


@pytest.fixture
def gclient(standin):
    return genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=standin.url, api_version="v1beta"))


# ---------------------------------------------------------------- 1. google-genai


def test_sdk_upload_create_poll_download(standin, gclient, tmp_path):
    src = tmp_path / "requests.jsonl"
    src.write_bytes(
        jsonl(
            line("a", "Re-light as overcast."),
            line("b", "Make it dusk.", image_size="2K"),
            line("c", "Square crop.", aspect="1:1", snake=True),
        )
    )
    f = gclient.files.upload(file=str(src), config={"mime_type": "application/jsonl", "display_name": "my input"})
    assert f.name.startswith("files/") and len(f.name) - len("files/") <= 40
    assert f.display_name == "my input" and f.mime_type == "application/jsonl" and f.size_bytes == src.stat().st_size
    assert f.state == types.FileState.ACTIVE and f.source == types.FileSource.UPLOADED and f.download_uri is None
    assert base64.b64decode(f.sha256_hash).decode() == hashlib.sha256(src.read_bytes()).hexdigest()
    assert f.expiration_time > f.create_time
    assert gclient.files.get(name=f.name).name == f.name
    (stored,) = standin.uploads
    assert stored.data == src.read_bytes() and stored.display_name == "my input"

    job = gclient.batches.create(model=MODEL, src=f.name, config={"display_name": "relight run 1"})
    assert job.state == types.JobState.JOB_STATE_PENDING and job.display_name == "relight run 1"
    assert job.name.startswith("batches/") and len(job.name) == len("batches/") + 36
    assert job.model == f"models/{MODEL}" and job.dest is None
    assert gclient.batches.get(name=job.name).state == types.JobState.JOB_STATE_RUNNING  # default: one poll unfinished
    done = gclient.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED and done.end_time is not None
    assert done.dest.file_name == f"files/batch-{job.name[len('batches/') :]}"

    results = [json.loads(x) for x in gclient.files.download(file=done.dest.file_name).decode().splitlines()]
    assert [r["key"] for r in results] == ["c", "b", "a"]  # not in input order
    sizes = {}
    for r in results:
        resp = types.GenerateContentResponse.model_validate(r["response"])  # extra fields forbidden
        part = [p for p in resp.candidates[0].content.parts if p.inline_data and not p.thought][-1]
        sizes[r["key"]] = size_of(part.inline_data.data)
    assert sizes == {"a": (1376, 768), "b": (2752, 1536), "c": (1024, 1024)}  # 2:1 input -> 16:9, like sync

    rec = standin.batches[0]
    assert rec.keys == ["a", "b", "c"] and rec.polls == 2 and rec.state == "BATCH_STATE_SUCCEEDED"
    assert [r.key for r in standin.batch_answers()] == ["a", "b", "c"]
    assert all(r.batch and r.protocol == "gemini" and r.batch_name == job.name for r in standin.batch_lines)
    # batch traffic stays out of the synchronous bookkeeping
    assert standin.answers() == [] and standin.requests_for("gemini") == [] and standin.max_in_flight == 0
    assert [r.kind for r in standin.requests] == [
        "file_upload_start",
        "file_upload_finalize",
        "file_get",
        "batch_create",
        "batch_get",
        "batch_get",
        "file_download",
    ]
    assert {r.protocol for r in standin.requests} == {"gemini_batch"}
    assert standin.key_leaks(KEY) == []


def test_batch_line_answer_is_the_sync_answer(standin):
    body = request_body("Re-light as overcast.", image_size="2K")
    sync = requests.post(
        f"{standin.gemini_base_url}/models/{MODEL}:generateContent", json=body, headers=AUTH, timeout=30
    ).json()
    _, (result,) = run_batch(standin, {"key": "k", "request": body})
    batch = result["response"]
    assert batch.pop("responseId") and sync.pop("responseId")
    assert batch == sync


def test_sdk_list_pages(standin, gclient):
    f = upload(standin, jsonl(line("a", "x")))
    names = [create(standin, f["name"], display=f"job {i}").json()["name"] for i in range(5)]
    seen = [j.name for j in gclient.batches.list(config={"page_size": 2})]
    assert seen == names[::-1]  # newest first, across three pages
    pages = [r for r in standin.requests if r.kind == "batch_list"]
    assert len(pages) == 3 and "pageSize=2" in pages[0].query and "pageToken=" in pages[1].query


def test_sdk_cancel_and_delete(standin, gclient):
    standin.set_batch_behaviour("hold")
    f = upload(standin, jsonl(line("a", "x"), line("b", "y")))
    job = gclient.batches.create(model=MODEL, src=f["name"], config={"display_name": "to cancel"})
    assert gclient.batches.get(name=job.name).state == types.JobState.JOB_STATE_RUNNING
    gclient.batches.cancel(name=job.name)
    cancelled = gclient.batches.get(name=job.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED and cancelled.dest is None
    assert standin.batch_lines == []  # nothing was answered, nothing to pay
    with pytest.raises(genai_errors.ClientError) as err:
        gclient.batches.cancel(name=job.name)
    assert err.value.code == 400 and err.value.status == "FAILED_PRECONDITION"
    gclient.batches.delete(name=job.name)
    with pytest.raises(genai_errors.ClientError) as err:
        gclient.batches.get(name=job.name)
    assert err.value.code == 404
    assert list(gclient.batches.list()) == [] and standin.batches[0].deleted


def test_sdk_inline_requests(standin, gclient):
    standin.set_batch_behaviour("succeed", polls=0)
    part = types.Part.from_bytes(data=JPEG, mime_type="image/jpeg")
    reqs = [
        {"contents": [part, "Make it dusk."], "metadata": {"key": "one"}, "config": {"response_modalities": ["IMAGE"]}},
        {
            "contents": [part, "Overcast."],
            "metadata": {"key": "two"},
            "config": {"response_modalities": ["IMAGE"], "image_config": {"aspect_ratio": "4:3"}},
        },
    ]
    job = gclient.batches.create(model=MODEL, src=reqs, config={"display_name": "inline"})
    done = gclient.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED and done.dest.file_name is None
    got = done.dest.inlined_responses  # input order
    assert [r.metadata for r in got] == [{"key": "one"}, {"key": "two"}]
    assert [size_of(r.response.candidates[0].content.parts[-1].inline_data.data) for r in got] == [
        (1376, 768),
        (1200, 896),
    ]
    raw = get(standin, job.name)
    assert "inputConfig" not in raw["metadata"] and raw["response"]["@type"] == TYPE_OUTPUT


def test_sdk_chunked_upload(standin, gclient, tmp_path, monkeypatch):
    monkeypatch.setattr(_api_client, "CHUNK_SIZE", 4096)
    standin.set_upload_granularity(4096)
    data = jsonl(*[line(f"k{i}", "x" * 3000) for i in range(4)])
    src = tmp_path / "big.jsonl"
    src.write_bytes(data)
    f = gclient.files.upload(file=str(src), config={"mime_type": "application/jsonl"})
    kinds = [r.kind for r in standin.requests]
    n = -(-len(data) // 4096)
    assert kinds == ["file_upload_start"] + ["file_upload"] * (n - 1) + ["file_upload_finalize"] and n >= 3
    offsets = [int(r.header("X-Goog-Upload-Offset")) for r in standin.requests[1:]]
    assert offsets == [4096 * i for i in range(n)]
    assert standin.uploads[0].data == data and f.size_bytes == len(data) and f.display_name is None


def test_sdk_wrong_key(standin, tmp_path):
    src = tmp_path / "x.jsonl"
    src.write_bytes(jsonl(line("a", "x")))
    bad = genai.Client(api_key="AIza-wrong", http_options=types.HttpOptions(base_url=standin.url, api_version="v1beta"))
    with pytest.raises(genai_errors.ClientError) as err:
        bad.files.upload(file=str(src), config={"mime_type": "application/jsonl"})
    assert err.value.code == 400 and err.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    with pytest.raises(genai_errors.ClientError) as err:
        list(bad.batches.list())
    assert err.value.code == 400 and standin.uploads == []


def test_sdk_failed_and_expired_states(standin, gclient):
    standin.script_batches(BatchBehaviour("fail", polls=0, code=8, message="quota"), {"kind": "expire", "polls": 0})
    f = upload(standin, jsonl(line("a", "x")))
    failed = gclient.batches.create(model=MODEL, src=f["name"], config={"display_name": "f"})
    expired = gclient.batches.create(model=MODEL, src=f["name"], config={"display_name": "e"})
    assert gclient.batches.get(name=failed.name).state == types.JobState.JOB_STATE_FAILED
    assert gclient.batches.get(name=expired.name).state == types.JobState.JOB_STATE_EXPIRED
    assert gclient.batches.get(name=expired.name).dest is None and standin.batch_lines == []


# ---------------------------------------------------------------- 2. raw wire format


def test_resumable_upload_by_hand(standin):
    standin.set_upload_granularity(4)
    data = b'{"key":"a","request":{"contents":[{"parts":[{"text":"hi"}]}]}}\n'
    start = requests.post(
        f"{standin.url}/upload/v1beta/files",
        timeout=10,
        headers={
            **AUTH,
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(len(data)),
            "X-Goog-Upload-Header-Content-Type": "application/jsonl",
            "Content-Type": "application/json",
        },
        data=json.dumps({"file": {"displayName": "by hand"}}),
    )
    assert start.status_code == 200 and start.content == b""
    h = start.headers
    url = h["X-Goog-Upload-URL"]
    assert url.startswith(f"{standin.url}/upload/v1beta/files?upload_id=")
    assert url.endswith("&upload_protocol=resumable")
    assert h["X-Goog-Upload-Status"] == "active" and h["X-Goog-Upload-Control-URL"] == url
    assert h["X-Goog-Upload-Chunk-Granularity"] == "4" and KEY not in url

    def send(cmd, chunk=b"", offset=None):
        headers = {"X-Goog-Upload-Command": cmd}  # no key: the upload URL is the credential
        if offset is not None:
            headers["X-Goog-Upload-Offset"] = str(offset)
        return requests.post(url, data=chunk, headers=headers, timeout=10)

    r = send("upload", data[:8], offset=0)
    assert r.status_code == 200 and r.headers["X-Goog-Upload-Status"] == "active" and r.content == b""
    assert r.headers["X-Goog-Upload-Size-Received"] == "8"
    r = send("upload", data[8:16], offset=0)  # stale offset
    assert r.status_code == 400 and r.headers["X-Goog-Upload-Size-Received"] == "8"
    r = send("upload", data[8:15], offset=8)  # not a multiple of the granularity
    assert r.status_code == 400 and "granularity" in r.json()["error"]["message"]
    r = send("query")
    assert r.headers["X-Goog-Upload-Status"] == "active" and r.headers["X-Goog-Upload-Size-Received"] == "8"
    assert standin.uploads == []
    r = send("upload, finalize", data[8:], offset=8)
    assert r.status_code == 200 and r.headers["X-Goog-Upload-Status"] == "final"
    f = r.json()["file"]
    assert list(f) == [
        "name",
        "displayName",
        "mimeType",
        "sizeBytes",
        "createTime",
        "updateTime",
        "expirationTime",
        "sha256Hash",
        "uri",
        "state",
        "source",
    ]
    assert f["sizeBytes"] == str(len(data)) and f["state"] == "ACTIVE" and f["source"] == "UPLOADED"
    assert f["mimeType"] == "application/jsonl" and f["displayName"] == "by hand"
    assert f["uri"] == f"{standin.url}/v1beta/{f['name']}" and f["createTime"].endswith("Z")
    assert base64.b64decode(f["sha256Hash"]).decode() == hashlib.sha256(data).hexdigest()
    again = send("upload, finalize", b"", offset=len(data))  # a client repeating a lost finalize
    assert again.status_code == 200 and again.json()["file"] == f and len(standin.uploads) == 1
    assert get(standin, f["name"]) == f
    assert (
        requests.get(
            f"{standin.gemini_base_url}/{f['name']}:download", params={"alt": "media"}, headers=AUTH, timeout=10
        ).status_code
        == 400
    )  # uploaded files cannot be downloaded

    # the final size must be the declared one; the failed session says final so clients stop
    start = requests.post(
        f"{standin.url}/upload/v1beta/files",
        timeout=10,
        headers={
            **AUTH,
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": "10",
            "X-Goog-Upload-Header-Content-Type": "text/plain",
        },
    )
    short = requests.post(
        start.headers["X-Goog-Upload-URL"],
        data=b"12345678",
        timeout=10,
        headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
    )
    assert short.status_code == 400 and short.headers["X-Goog-Upload-Status"] == "final"
    assert len(standin.uploads) == 1
    not_resumable = requests.post(f"{standin.url}/upload/v1beta/files", headers=AUTH, timeout=10)
    assert not_resumable.status_code == 400


def test_operation_shape_and_string_counts(standin):
    standin.set_batch_behaviour("succeed", polls=1)
    f = upload(standin, jsonl(line("a", "x"), line("b", "y")))
    r = create(standin, f["name"], display="shape")
    assert r.status_code == 200
    op = r.json()
    assert set(op) == {"name", "metadata"}  # no "done" until finished
    meta = op["metadata"]
    assert list(meta) == [
        "@type",
        "model",
        "displayName",
        "inputConfig",
        "createTime",
        "updateTime",
        "batchStats",
        "state",
        "name",
    ]
    assert meta["@type"] == TYPE_BATCH and meta["model"] == f"models/{MODEL}" and meta["name"] == op["name"]
    assert meta["inputConfig"] == {"fileName": f["name"]} and meta["state"] == "BATCH_STATE_PENDING"
    assert meta["batchStats"] == {"requestCount": "2", "pendingRequestCount": "2"}  # int64 strings, zeros left out
    running = get(standin, op["name"])
    assert "done" not in running and running["metadata"]["state"] == "BATCH_STATE_RUNNING"
    done = get(standin, op["name"])
    meta = done["metadata"]
    assert done["done"] is True and meta["state"] == "BATCH_STATE_SUCCEEDED" and "endTime" in meta
    rf = f"files/batch-{op['name'][len('batches/') :]}"
    assert len(rf) - len("files/") == 42
    assert meta["output"] == {"responsesFile": rf} and done["response"] == {"@type": TYPE_OUTPUT, "responsesFile": rf}
    assert meta["batchStats"] == {"requestCount": "2", "successfulRequestCount": "2"}
    standin.set_batch_stats("full")
    assert get(standin, op["name"])["metadata"]["batchStats"] == {
        "requestCount": "2",
        "successfulRequestCount": "2",
        "failedRequestCount": "0",
        "pendingRequestCount": "0",
    }
    standin.set_batch_stats("omit")
    assert "batchStats" not in get(standin, op["name"])["metadata"]
    standin.set_batch_stats("real")
    standin.script_batches(BatchBehaviour("succeed", stats="omit"))
    other = create(standin, f["name"]).json()
    assert "batchStats" not in other["metadata"] and "batchStats" in get(standin, op["name"])["metadata"]


def test_failed_lines_follow_the_sync_behaviours(standin):
    standin.set_default("gemini", "server_error", match="BROKEN")
    standin.script("gemini", "rate_limit", match="LIMITED")
    standin.set_default("gemini", "image_safety", match="HARSH")
    standin.set_rule(lambda req: B("drop") if req.key == "dropped" else None)
    done, results = run_batch(
        standin,
        line("ok1", "fine"),
        line("e500", "BROKEN one"),
        line("e429", "LIMITED"),
        line("blocked", "HARSH light"),
        line("dropped", "fine too"),
        line("ok2", "fine"),
        line("bad", "fine", aspect="2:1"),
    )
    by_key = {r["key"]: r for r in results}
    assert [r["key"] for r in results] == ["bad", "ok2", "dropped", "blocked", "e429", "e500", "ok1"]
    # error lines are google.rpc.Status: gRPC code, message, no "status" string
    assert by_key["e500"]["error"]["code"] == 13 and "internal error" in by_key["e500"]["error"]["message"]
    assert set(by_key["e500"]["error"]) == {"code", "message"}
    assert by_key["e429"]["error"]["code"] == 8 and "status" not in by_key["e429"]["error"]
    assert by_key["dropped"]["error"]["code"] == 13
    assert by_key["bad"]["error"] == {
        "code": 3,
        "message": "Unsupported aspect ratio: 2:1. Supported: 1:1, 2:3, 3:2, 3:4, 4:3, 4:5, 5:4, 9:16, 16:9, 21:9",
    }
    cand = by_key["blocked"]["response"]["candidates"][0]
    assert cand["finishReason"] == "IMAGE_SAFETY" and "content" not in cand  # a valid, blocked answer
    assert done["metadata"]["batchStats"] == {
        "requestCount": "7",
        "successfulRequestCount": "3",
        "failedRequestCount": "4",
    }
    assert sorted(r.key for r in standin.batch_answers()) == ["ok1", "ok2"]
    kinds = {r.key: (r.kind, r.status) for r in standin.batch_lines}
    assert kinds["e429"] == ("rate_limit", 429) and kinds["bad"] == ("invalid_request", 400)
    assert kinds["dropped"] == ("drop", None) and kinds["blocked"] == ("image_safety", 200)
    assert standin.requests_for("gemini") == [] and standin.pending("gemini") == 0


def test_malformed_jsonl_fails_the_create(standin):
    misplaced = line("m", "x")
    misplaced["request"]["generationConfig"]["aspectRatio"] = "16:9"  # belongs inside imageConfig
    data = jsonl(line("a", "x")) + b"{not json\n" + jsonl(misplaced) + b"\n" + jsonl({"key": "r", "reqest": {}})
    f = upload(standin, data)
    r = create(standin, f["name"])
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["status"] == "INVALID_ARGUMENT"
    msgs = err["message"].split("\n")
    assert len(msgs) == 3 and msgs[0].startswith("Error on line 2: invalid JSON, near column ")
    assert msgs[1].startswith("Error on line 3: invalid JSON") and msgs[1].endswith("no such field: 'aspectRatio'")
    assert msgs[2].startswith("Error on line 5:") and "'reqest'" in msgs[2]
    bad_b64 = line("b", "x")
    bad_b64["request"]["contents"][0]["parts"][0]["inlineData"]["data"] = "!!*~"
    r = create(standin, upload(standin, jsonl(bad_b64))["name"])
    assert r.status_code == 400 and "bytes field 'data'" in r.json()["error"]["message"]
    assert standin.batches == []  # nothing was created, nothing is paid


def test_semantic_line_errors_become_error_lines(standin):
    garbage = line("g", "x", image=b"\xff\xd8 not really a jpeg")
    _, results = run_batch(standin, garbage, line("big", "x", image_size="8K"))
    errors = {r["key"]: r["error"] for r in results}
    assert errors["g"]["code"] == 3 and "Unable to process input image" in errors["g"]["message"]
    assert errors["big"] == {"code": 3, "message": "Unsupported image size: 8K. Supported: 1K, 2K, 4K"}


def test_create_validation(standin):
    f = upload(standin, jsonl(line("a", "x")))
    assert create(standin, f["name"], model="gemini-9-nope").status_code == 404
    r = requests.post(
        f"{standin.gemini_base_url}/models/{MODEL}:batchGenerateContent",
        headers=AUTH,
        timeout=10,
        json={"batch": {"input_config": {"file_name": f["name"]}}},
    )
    assert r.status_code == 400 and "display_name" in r.json()["error"]["message"]
    r = create(standin, "files/doesnotexist1")
    assert r.status_code == 403 and r.json()["error"]["message"] == (
        "You do not have permission to access the File doesnotexist1 or it may not exist."
    )
    r = requests.post(
        f"{standin.gemini_base_url}/models/{MODEL}:batchGenerateContent",
        headers=AUTH,
        timeout=10,
        json={"batch": {"displayName": "x", "inputConfig": {"fileName": f["name"]}, "colour": 1}},
    )
    assert r.status_code == 400 and "Unknown name" in r.json()["error"]["message"]
    assert create(standin, upload(standin, b"\n\n")["name"]).status_code == 400  # no requests
    assert standin.batches == []


def test_expire_and_fail_have_no_results(standin):
    standin.script_batches({"kind": "expire", "polls": 0}, {"kind": "fail", "polls": 0})
    f = upload(standin, jsonl(line("a", "x")))
    expired = get(standin, create(standin, f["name"]).json()["name"])
    failed = get(standin, create(standin, f["name"]).json()["name"])
    assert expired["done"] is True and expired["metadata"]["state"] == "BATCH_STATE_EXPIRED"
    assert "output" not in expired["metadata"] and "response" not in expired and "error" not in expired
    assert failed["metadata"]["state"] == "BATCH_STATE_FAILED" and failed["error"]["code"] == 13
    assert "response" not in failed
    rf = f"files/batch-{expired['name'][len('batches/') :]}"
    assert (
        requests.get(f"{standin.url}/download/v1beta/{rf}:download?alt=media", headers=AUTH, timeout=10).status_code
        == 403
    )
    assert standin.batch_lines == []


def test_polls_are_counted_and_wake_wait_until(standin):
    standin.set_batch_behaviour("succeed", polls=3)
    f = upload(standin, jsonl(line("a", "x")))
    name = create(standin, f["name"]).json()["name"]
    seen = []
    waiter = threading.Thread(
        target=lambda: seen.append(
            standin.wait_until(lambda s: s.batches and s.batches[0].polls >= 2, timeout=20) or "woken"
        )
    )
    waiter.start()
    states = [get(standin, name)["metadata"]["state"] for _ in range(4)]
    waiter.join(20)
    assert seen == ["woken"]
    assert states == ["BATCH_STATE_RUNNING"] * 3 + ["BATCH_STATE_SUCCEEDED"]
    assert standin.batches[0].polls == 4
    # a listing shows the state without counting as a poll
    assert requests.get(f"{standin.gemini_base_url}/batches", headers=AUTH, timeout=10).status_code == 200
    assert standin.batches[0].polls == 4


def test_polls_zero_and_scripted_queue(standin):
    standin.script_batches(BatchBehaviour("succeed", polls=0), "hold")
    f = upload(standin, jsonl(line("a", "x")))
    first = create(standin, f["name"]).json()
    assert first["metadata"]["state"] == "BATCH_STATE_PENDING"  # the create answer says PENDING
    assert len(standin.batch_answers()) == 1  # ...but the job was answered at creation
    assert get(standin, first["name"])["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    held = create(standin, f["name"]).json()["name"]
    third = create(standin, f["name"]).json()["name"]  # queue empty: the default (succeed, polls=1)
    for _ in range(3):
        assert get(standin, held)["metadata"]["state"] == "BATCH_STATE_RUNNING"
    get(standin, third)
    assert get(standin, third)["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    assert standin.finish_batches() == [held]
    assert get(standin, held)["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    assert [b.behaviour.kind for b in standin.batches] == ["succeed", "hold", "succeed"]
    assert len(standin.batch_answers()) == 3


def test_hold_create_the_job_exists_before_the_client_knows(standin, gclient):
    standin.hold_batch_step("create")
    f = upload(standin, jsonl(line("a", "x")))
    got = []
    t = threading.Thread(
        target=lambda: got.append(
            gclient.batches.create(model=MODEL, src=f["name"], config={"display_name": "held"}).name
        )
    )
    t.start()
    standin.wait_until(lambda s: any(r.held for r in s.requests), timeout=20)
    (held,) = [r for r in standin.requests if r.held]
    assert held.kind == "batch_create" and got == []
    listed = requests.get(f"{standin.gemini_base_url}/batches", headers=AUTH, timeout=10).json()["operations"]
    assert [o["name"] for o in listed] == [held.batch_name] == [standin.batches[0].name]
    assert standin.batches[0].create_answered is False
    standin.release()
    t.join(20)
    assert got == [held.batch_name] and standin.batches[0].create_answered and not held.held


def test_hold_upload_and_download(standin, gclient, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl(line("a", "x")))
    standin.hold_batch_step("upload", "download")
    out = {}
    t = threading.Thread(
        target=lambda: out.setdefault(
            "file", gclient.files.upload(file=str(src), config={"mime_type": "application/jsonl"})
        )
    )
    t.start()
    standin.wait_until(lambda s: any(r.held for r in s.requests), timeout=20)
    assert len(standin.uploads) == 1 and "file" not in out  # stored, but the client has no name yet
    standin.release_batch_step("upload")
    t.join(20)
    assert out["file"].name == standin.uploads[0].name
    standin.set_batch_behaviour("succeed", polls=0)
    job = gclient.batches.create(model=MODEL, src=out["file"].name, config={"display_name": "d"})
    rf = gclient.batches.get(name=job.name).dest.file_name
    t = threading.Thread(target=lambda: out.setdefault("data", gclient.files.download(file=rf)))
    t.start()
    standin.wait_until(lambda s: any(r.held and r.kind == "file_download" for r in s.requests), timeout=20)
    assert "data" not in out
    standin.release_batch_step()
    t.join(20)
    assert json.loads(out["data"])["key"] == "a"
    # released steps are disarmed: a second download is not held
    assert download(standin, rf)[0]["key"] == "a"


def test_list_paging_raw(standin):
    f = upload(standin, jsonl(line("a", "x")))
    names = [create(standin, f["name"], display=f"j{i}").json()["name"] for i in range(5)]
    requests.delete(f"{standin.gemini_base_url}/{names[2]}", headers=AUTH, timeout=10).raise_for_status()
    url = f"{standin.gemini_base_url}/batches"
    p1 = requests.get(url, params={"pageSize": 3}, headers=AUTH, timeout=10).json()
    p2 = requests.get(url, params={"pageSize": 3, "pageToken": p1["nextPageToken"]}, headers=AUTH, timeout=10).json()
    assert [o["name"] for o in p1["operations"] + p2["operations"]] == [names[4], names[3], names[1], names[0]]
    assert "nextPageToken" not in p2
    assert len(requests.get(url, headers=AUTH, timeout=10).json()["operations"]) == 4  # default page size 10
    assert requests.get(url, params={"pageToken": "bogus!"}, headers=AUTH, timeout=10).status_code == 400
    standin.reset()
    assert requests.get(url, headers=AUTH, timeout=10).json() == {}


def test_file_id_limit_and_missing_files(standin):
    long_id = "batch-" + "a" * 36
    r = requests.get(f"{standin.gemini_base_url}/files/{long_id}", headers=AUTH, timeout=10)
    assert r.status_code == 400 and r.json()["error"] == {
        "code": 400,
        "status": "INVALID_ARGUMENT",
        "message": "* GetFileRequest.name: File ID (name excluding 'files/') cannot be more than 40 characters.\n",
    }
    r = requests.delete(f"{standin.gemini_base_url}/files/{long_id}", headers=AUTH, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("* DeleteFileRequest.name")
    r = requests.get(f"{standin.gemini_base_url}/files/{'a' * 40}", headers=AUTH, timeout=10)
    assert r.status_code == 403 and r.json()["error"]["status"] == "PERMISSION_DENIED"
    f = upload(standin, jsonl(line("a", "x")))
    assert requests.delete(f"{standin.gemini_base_url}/{f['name']}", headers=AUTH, timeout=10).json() == {}
    assert requests.get(f"{standin.gemini_base_url}/{f['name']}", headers=AUTH, timeout=10).status_code == 403
    assert standin.uploads[0].deleted
    assert create(standin, f["name"]).status_code == 403


def test_keys(standin):
    f = upload(standin, jsonl(line("a", "x")))
    base = standin.gemini_base_url
    calls = [
        ("get", f"{base}/batches", None),
        ("get", f"{base}/{f['name']}", None),
        (
            "post",
            f"{base}/models/{MODEL}:batchGenerateContent",
            {"batch": {"display_name": "x", "input_config": {"file_name": f["name"]}}},
        ),
        ("post", f"{standin.url}/upload/v1beta/files", None),
    ]
    for method, url, body in calls:
        missing = requests.request(
            method,
            url,
            json=body,
            timeout=10,
            headers={"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start"},
        )
        assert missing.status_code == 403 and missing.json()["error"]["status"] == "PERMISSION_DENIED", url
        wrong = requests.request(
            method,
            url,
            json=body,
            timeout=10,
            headers={
                "x-goog-api-key": "AIza-wrong",
                "X-Goog-Upload-Protocol": "resumable",
                "X-Goog-Upload-Command": "start",
            },
        )
        assert wrong.status_code == 400 and wrong.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID", url
    assert standin.batches == [] and len(standin.uploads) == 1


def test_reset_and_http_control(standin):
    ctl = f"{standin.url}/_standin/batch"
    requests.post(ctl, json={"behaviour": {"kind": "hold", "then": "fail"}}, timeout=10).raise_for_status()
    f = upload(standin, jsonl(line("a", "x")))
    name = create(standin, f["name"]).json()["name"]
    assert get(standin, name)["metadata"]["state"] == "BATCH_STATE_RUNNING"
    assert requests.post(ctl, json={"finish": True}, timeout=10).json()["finished"] == [name]
    assert get(standin, name)["metadata"]["state"] == "BATCH_STATE_FAILED"
    summary = requests.get(f"{standin.url}/_standin/batches", timeout=10).json()
    assert summary["batches"][0]["name"] == name and summary["batches"][0]["polls"] == 2
    assert standin.stats()["by_protocol"]["gemini_batch"] == len(standin.requests)
    standin.reset()
    assert standin.batches == [] and standin.uploads == [] and standin.batch_lines == []
    assert requests.get(f"{standin.gemini_base_url}/{name}", headers=AUTH, timeout=10).status_code == 404
    assert standin.batch.stats_mode == "real" and standin.batch._default.kind == "succeed"
