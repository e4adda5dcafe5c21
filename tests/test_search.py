"""Search with the codes: the items and index stages, `cmhash search`, the HTTP API and the page
in a real browser, on a small project built once for the module."""

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import COMMAND_ENV, tiny_params

from cmhash.pipeline import stages
from cmhash.pipeline.cli import main, search_service
from cmhash.pipeline.layout import Layout
from cmhash.service.search_service import Request

EVIL_CAPTION = '<img src=x onerror="document.title=\'pwned\'">\x1b[2Ja caption with markup'


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """600 built-in items; DCMHT (supervised, 32 bits), LSH (no learned alignment) and CLIPMH (fused);
    the first retrieval item's caption replaced by markup and an ANSI escape, as users' data may hold.
    Returns the params, the layout and that item's id."""
    params = tiny_params()
    params["dataset"]["builtin"] = {"size": 600, "image_size": 64}
    params["dataset"]["split"] = {"query": 100, "train": 400}
    params["train"]["methods"], params["train"]["bits"] = ["dcmht", "lsh", "clipmh"], [32]
    params["methods"]["dcmht"].update({"epochs": 40, "hidden": 128})
    layout = Layout(tmp_path_factory.mktemp("search"))
    stages.prepare.run(params, layout, progress=False)
    with h5py.File(layout.prepared("builtin"), "r+") as f:
        evil_item = int(f["splits/retrieval"][0])
        texts = f["texts"][()]
        texts[np.flatnonzero(f["text_item"][()] == evil_item)[0]] = EVIL_CAPTION.encode()
        del f["texts"]
        f.create_dataset("texts", data=texts.astype(object), dtype=h5py.string_dtype())
    stages.encode.run(params, layout, progress=False)
    for method in params["train"]["methods"]:
        stages.train.run(params, layout, method, 32, progress=False)
    stages.evaluate.run(params, layout, progress=False, log=lambda line: None)
    stages.items.run(params, layout, progress=False)
    stages.index.run(params, layout, log=lambda line: None)  # records the catalog it was built with
    (layout.root / "params.yaml").write_text(yaml.safe_dump(params))
    return params, layout, evil_item


def _search(layout, *args, json_output=True):
    argv = ["search", "--params", str(layout.root / "params.yaml"), "--root", str(layout.root), *args]
    return main(argv + (["--json"] if json_output else []))


def test_the_index_stage_writes_packed_codes_ids_and_the_query_recipe(project):
    params, layout, evil_item = project
    folder = layout.index_dir("dcmht", 32)
    info = json.loads((folder / "index.json").read_text())
    assert info["method"] == "dcmht" and info["bits"] == 32 and not info["fused"] and info["items"] == 500
    assert info["encoder"]["name"] == "efficientnet-lite0+all-minilm-l6-v2" and info["encoder"]["text"] == "captions"
    header = (folder / "images.hidx").read_bytes().split(b"\n", 2)
    assert json.loads(header[1]) == {"bits": 32, "items": 500} and len(header[2]) == 500 * 8  # one 64-bit word an item
    from cmhash.datasets.prepared import PreparedData

    with PreparedData(layout.prepared("builtin")) as data:
        assert np.array_equal(np.load(folder / "ids.npy"), data.splits["retrieval"])
    assert (layout.model_dir("dcmht", 32) / "model.pt").read_bytes() == (folder / "model.pt").read_bytes()
    assert sorted(os.listdir(layout.index_dir("clipmh", 32))) == ["ids.npy", "index.json", "model.pt", "pairs.hidx"]
    assert len(os.listdir(layout.items_dir() / "images")) == 600


def test_label_names_find_items_carrying_them_far_above_chance(project):
    """A text made of a label name finds images with that label: DCMHT's learned codes far above the
    label's share of the items; LSH, which learns no alignment of the two encoders, at chance."""

    params, layout, evil_item = project
    service = search_service(params, layout)
    names, labels = service.items.label_names, service.items.labels
    chance = float(labels.mean())
    precision = {}
    for method in ("dcmht", "lsh"):
        found = [[name in result["labels"] for result in service.search(method, 32, 20, text=f"a photo of a {name}")["results"]]
                 for name in names]
        precision[method] = float(np.mean(found))
    assert precision["dcmht"] > 2.2 * chance, precision
    assert precision["lsh"] < 1.3 * chance, precision


def test_cli_searches_with_a_text_or_an_image(project, capsys):
    params, layout, evil_item = project
    assert _search(layout, "--method", "dcmht", "--bits", "32", "--text", "a red square", "--k", "5") == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["direction"] == "text→image" and [r["rank"] for r in answer["results"]] == [1, 2, 3, 4, 5]
    distances = [r["distance"] for r in answer["results"]]
    assert distances == sorted(distances) and all(Path(r["image_path"]).is_file() for r in answer["results"])
    image = layout.items_dir() / "images" / "3.jpg"
    assert _search(layout, "--method", "dcmht", "--bits", "32", "--image", str(image), "--k", "3") == 0
    assert json.loads(capsys.readouterr().out)["direction"] == "image→text"
    assert _search(layout, "--method", "clipmh", "--bits", "32", "--image", str(image), "--text", "a star") == 0
    assert json.loads(capsys.readouterr().out)["direction"] == "pair→pair"
    # the table, with users' captions escaped for the terminal
    assert _search(layout, "--method", "lsh", "--bits", "32", "--text", "x", "--k", "500", json_output=False) == 0
    table = capsys.readouterr().out
    assert "rank  id" in table and "\\x1b[2Ja caption with markup" in table and "\x1b" not in table


@pytest.mark.parametrize("args, message", [
    (["--method", "nope", "--bits", "32", "--text", "x"], "there is no index for method 'nope' at 32 bits; indexes here: clipmh 32, dcmht 32, lsh 32."),
    (["--method", "dcmht", "--bits", "64", "--text", "x"], "there is no index for method 'dcmht' at 64 bits"),
    (["--method", "dcmht", "--bits", "32", "--text", "   "], "the query text is empty"),
    (["--method", "dcmht", "--bits", "32", "--text", "x", "--k", "0"], "k must be a whole number from 1 to 10,000, got 0."),
    (["--method", "dcmht", "--bits", "32", "--text", "x", "--k", "ten"], "k must be a whole number from 1 to 10,000, got 'ten'"),
    (["--method", "dcmht", "--bits", "32", "--text", "x", "--k", "99999999"], "k must be a whole number from 1 to 10,000"),
    (["--method", "../../../evil", "--bits", "32", "--text", "x"], "there is no index for method '../../../evil' at 32 bits"),
    (["--method", "/tmp", "--bits", "32", "--text", "x"], "there is no index for method '/tmp' at 32 bits"),
    (["--method", "m" * 300, "--bits", "32", "--text", "x"], "there is no index for method 'mmmmmmmm"),
    (["--method", "dcmht", "--bits", "32", "--image", "/dev/zero"], "/dev/zero: not a regular file; --image takes an image file"),
    (["--method", "dcmht", "--bits", "32", "--image", "."], ".: not a regular file"),
    (["--method", "dcmht", "--bits", "32"], "give a text or an image to search with"),
    (["--method", "clipmh", "--bits", "32", "--text", "x"], "clipmh makes one code per image-text pair"),
    (["--method", "dcmht", "--bits", "32", "--image", "params.yaml"], "is not an image PIL can read"),
    (["--method", "dcmht", "--bits", "32", "--image", "missing.jpg"], "missing.jpg: cannot read the image"),
])
def test_cli_bad_input_is_one_line(project, capsys, monkeypatch, args, message):
    params, layout, evil_item = project
    monkeypatch.chdir(layout.root)
    assert _search(layout, *args) == 1
    err = capsys.readouterr().err
    assert err.startswith("cmhash search: error: ") and message in err and err.count("\n") == 1, err


def test_long_text_and_large_k_are_served_and_said(project, capsys):
    params, layout, evil_item = project
    assert _search(layout, "--method", "dcmht", "--bits", "32", "--text", "a red square " * 200, "--k", "10000") == 0
    answer = json.loads(capsys.readouterr().out)
    assert len(answer["results"]) == 500
    assert answer["notes"] == ["the query has 602 tokens; the text encoder reads the first 256, the rest was ignored",
                               "k=10000 is more than the 500 indexed items; all of them are returned"]


def test_an_index_of_another_encoder_is_refused(project, tmp_path, capsys):
    params, layout, evil_item = project
    other = {**params, "encode": {**params["encode"], "offline": {"image_size": 96}}}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    assert main(["search", "--params", str(tmp_path / "other.yaml"), "--root", str(layout.root), "--method", "dcmht",
                 "--bits", "32", "--text", "x"]) == 1
    err = capsys.readouterr().err
    assert "index dcmht-32 was built from features of efficientnet-lite0+all-minilm-l6-v2" in err
    assert "'image_size': 64" in err and "'image_size': 96" in err


def test_the_http_api(project):
    from fastapi.testclient import TestClient

    from cmhash.service.server import create_app

    params, layout, evil_item = project
    client = TestClient(create_app(search_service(params, layout)))
    models = client.get("/api/models").json()
    assert [(m["method"], m["bits"]) for m in models] == [("clipmh", 32), ("dcmht", 32), ("lsh", 32)]
    assert 0 < models[1]["map"]["t2i"]["map_all"] < 1
    answer = client.get("/api/search", params={"text": "a blue star", "method": "dcmht", "bits": 32, "k": 4}).json()
    assert len(answer["results"]) == 4 and answer["milliseconds"]["search"] >= 0
    image = (layout.items_dir() / "images" / "8.jpg").read_bytes()
    posted = client.post("/api/search?method=dcmht&bits=32&k=2", content=image, headers={"Content-Type": "image/jpeg"})
    assert posted.status_code == 200 and posted.json()["direction"] == "image→text"
    item = client.get(f"/api/items/{answer['results'][0]['id']}").json()
    assert item["captions"] and item["labels"]
    thumbnail = client.get(f"/api/items/{item['id']}/image")
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    for request, status, message in [
        (("get", "/api/search", {"params": {"text": "", "method": "dcmht", "bits": 32}}), 422, "text: the query text is empty"),
        (("get", "/api/search", {"params": {"text": " \t", "method": "dcmht", "bits": 32}}), 422, "text: the query text is empty"),
        (("get", "/api/search", {"params": {"text": "x", "method": "x", "bits": 32}}), 404, "indexes here: clipmh 32"),
        (("get", "/api/search", {"params": {"text": "x", "method": "dcmht", "bits": 32, "k": "-2"}}), 422,
         "k: Input should be greater than or equal to 1"),
        (("get", "/api/search", {"params": {"method": "dcmht", "bits": 32}}), 422, "text: Field required"),
        (("get", "/api/search", {"params": {"text": "x", "method": "dcmht", "bits": "a lot"}}), 422, "bits: Input should be a valid integer"),
        (("get", "/api/search", {"params": {"text": "x", "method": "/tmp/evil", "bits": 32}}), 404, "there is no index for method '/tmp/evil'"),
        (("get", "/api/search", {"params": {"text": "x" * 10001, "method": "dcmht", "bits": 32}}), 422, "text: String should have at most 10000"),
        (("get", "/api/nothing-here", {}), 404, "no such route: /api/nothing-here"),
        (("delete", "/api/models", {}), 405, "DELETE is not allowed on /api/models"),
        (("post", "/api/search?method=dcmht&bits=32", {"content": b"not an image"}), 415, "not an image"),
        (("post", "/api/search?method=dcmht&bits=32", {"content": b""}), 400, "has no image"),
        (("post", "/api/search?method=dcmht&bits=32", {"content": b"0" * (10 * 1024 * 1024 + 1)}), 413, "bytes"),
        (("get", "/api/items/100000", {}), 404, "there is no item 100000"),
        (("get", "/api/items/abc/image", {}), 422, "item: Input should be a valid integer"),
        (("get", "/api/items/-1", {}), 422, "item: Input should be greater than or equal to 0"),
    ]:
        verb, url, kwargs = request
        response = getattr(client, verb)(url, **kwargs)
        assert response.status_code == status and message in response.json()["error"], (url, response.text)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SERVER_PIDS: dict[str, int] = {}  # the served fixture's URL -> the server's process id


@pytest.fixture(scope="module")
def served(project):
    """A real `cmhash serve` process on a free port of 127.0.0.1."""
    params, layout, evil_item = project
    port = _free_port()
    server = subprocess.Popen(["cmhash", "serve", "--port", str(port), "--params", "params.yaml"], cwd=layout.root,
                              env={**COMMAND_ENV, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    import httpx

    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/models", timeout=2).raise_for_status()
            break
        except httpx.HTTPError:
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()
            time.sleep(0.5)
    SERVER_PIDS[f"http://127.0.0.1:{port}"] = server.pid
    yield f"http://127.0.0.1:{port}"
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(30)


@pytest.mark.e2e  # the served API, fuzzed by schemathesis
def test_the_openapi_document_is_the_api(served, tmp_path):
    """A property-based API fuzzer (schemathesis) generates requests from /api/openapi.json, valid and
    invalid, sends them to the real server and checks every answer against the document: no server
    error, only documented statuses, media types and bodies, invalid input refused, valid input not,
    the Allow header of 405s. Every case must pass."""
    st = Path(sys.executable).parent / "st"
    result = subprocess.run([str(st), "run", f"{served}/api/openapi.json", "--checks", "all", "--max-examples", "25",
                             "--seed", "1", "--generation-database", "none", "--workers", "1", "--no-color",
                             "--request-timeout", "60"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:]
    assert " passed" in result.stdout and "generated" in result.stdout


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium; .ci/run installs it)")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.e2e  # the served page in headless Chromium
@needs_chromium
def test_a_search_link_opens_with_its_results_drawn(served, tmp_path):
    """The page reads its query from the URL (Chromium's --dump-dom: the DOM after the page's scripts ran)."""
    url = f"{served}/?text=a+photo+of+a+green+circle&method=dcmht&bits=32&k=6"
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert dom.count('class="result"') == 6 and "encode" in dom and "dcmht 32 bits, text→image" in dom
    from html.parser import HTMLParser

    class Images(HTMLParser):
        sources = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.sources.append(dict(attrs)["src"])

    parser = Images()
    parser.feed(dom)
    assert len(parser.sources) == 6 and all(src.startswith("/api/items/") for src in parser.sources)


@pytest.mark.e2e  # the served page in headless Chromium
@needs_chromium
def test_a_query_typed_into_the_page_is_searched(served, tmp_path, project):
    """Typed with real key events through the DevTools protocol; results drawn, URL updated, users'
    captions shown as text (the markup in one is not run)."""
    result = _drive_browser(served, tmp_path, typed="a photo of a blue star")
    assert result["cards"] == 8 and "text=a+photo+of+a+blue+star" in result["url"] and result["title"] == "cmhash search"
    shown = _drive_browser(served, tmp_path, url=f"{served}/?text=x&method=lsh&bits=32&k=500")
    assert shown["captions"][str(project[2])] == [EVIL_CAPTION]  # as text, character for character
    assert shown["title"] == "cmhash search" and shown["injected_images"] == 0
    for page in (result, shown):  # every request the page made went to the server on 127.0.0.1
        assert any("/api/search?" in url for url in page["requests"]) and any(url.endswith("/image") for url in page["requests"])
        assert [url for url in page["requests"] if not url.startswith(served)] == []


def _drive_browser(base: str, tmp_path: Path, typed: str | None = None, url: str | None = None) -> dict:
    """Open the page in headless Chromium, type ``typed`` into the search box and press Enter (or open
    ``url``), wait for the results, and read the page back, with every request the page made."""
    from websockets.sync.client import connect

    port = _free_port()
    browser = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--remote-debugging-port={port}",
                                f"--user-data-dir={tmp_path / f'profile-{port}'}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                target = next(page for page in pages if page["type"] == "page")
                break
            except (httpx.HTTPError, StopIteration):
                assert time.monotonic() < deadline, "Chromium's DevTools did not start"
                time.sleep(0.3)
        with connect(target["webSocketDebuggerUrl"], max_size=None) as devtools:
            calls, requests = iter(range(1, 10_000)), []

            def call(method, **params):
                number = next(calls)
                devtools.send(json.dumps({"id": number, "method": method, "params": params}))
                while True:
                    message = json.loads(devtools.recv(timeout=60))
                    if message.get("method") == "Network.requestWillBeSent":
                        requests.append(message["params"]["request"]["url"])
                    if message.get("id") == number:
                        return message.get("result", {})

            def evaluate(expression):
                return call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)["result"].get("value")

            def wait_for(expression, seconds=60):
                deadline = time.monotonic() + seconds
                while not evaluate(expression):
                    assert time.monotonic() < deadline, f"timed out waiting for {expression}"
                    time.sleep(0.2)

            call("Page.enable")
            call("Network.enable")
            call("Page.navigate", url=url or f"{base}/")
            wait_for("document.readyState === 'complete' && document.querySelectorAll('#model option').length > 0")
            if typed is not None:
                evaluate("document.getElementById('model').value = 'dcmht 32'; document.getElementById('k').value = '8'; "
                         "document.getElementById('text').focus(); true")
                for character in typed:
                    call("Input.dispatchKeyEvent", type="keyDown", text=character, key=character)
                    call("Input.dispatchKeyEvent", type="keyUp", key=character)
                call("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter", windowsVirtualKeyCode=13, text="\r")
                call("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter", windowsVirtualKeyCode=13)
            wait_for("document.querySelectorAll('.result').length > 0 && [...document.images].some(i => i.complete)")
            return {"requests": requests, **evaluate("""({
                cards: document.querySelectorAll('.result').length,
                url: location.href,
                title: document.title,
                injected_images: document.querySelectorAll('.caption img').length,
                captions: Object.fromEntries([...document.querySelectorAll('.result')].map(
                    card => [card.dataset.id, [...card.querySelectorAll('.caption')].map(c => c.textContent)])),
            })""")}
    finally:
        browser.terminate()
        browser.wait(30)


# ---- hostile and careless input (issue 19): names, limits, damaged files, the API document, batches

@pytest.fixture
def workspace(project, tmp_path):
    """A copy of the module's project (indexes, catalog, metrics, params) that a test may damage."""
    params, layout, evil_item = project
    root = tmp_path / "copy"
    for folder in ("data/index", "data/items", "metrics"):
        shutil.copytree(layout.root / folder, root / folder)
    shutil.copy(layout.root / "params.yaml", root / "params.yaml")
    return params, Layout(root)


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_an_index_is_named_never_a_path_and_the_cache_stays_flat(workspace):
    from cmhash.search.query import SearchError

    params, layout = workspace
    service = search_service(params, layout)
    first = service.search("dcmht", 32, 3, text="a red square")
    before, loaded = _open_files(), len(service._indexes)
    spellings = [f"{'./' * i}dcmht" for i in range(1, 101)] + [f"dcmht{'/' * i}" for i in range(1, 101)]
    spellings += [str(layout.index_dir("dcmht", 32)), "../index/dcmht", "/tmp/evil", "%2Fdcmht", "dcmht\x00", "DCMHT",
                  "m" * 300, "..", "."] + [f"{i}/../dcmht" for i in range(91)]
    for method in spellings:
        with pytest.raises(SearchError, match="there is no index for method") as error:
            service.search(method, 32, 3, text="a red square")
        assert error.value.status == 404 and "indexes here: clipmh 32, dcmht 32, lsh 32." in str(error.value)
        assert len(str(error.value)) < 200  # the name it refuses is quoted short
    assert len(service._indexes) == loaded == 1 and _open_files() <= before + 2
    assert service.search("dcmht", 32, 3, text="a red square")["results"] == first["results"]
    # a folder that appears (dvc repro) is found; one that goes away is forgotten
    shutil.copytree(layout.index_dir("lsh", 32), layout.root / "data" / "index" / "lsh-64")
    assert (("lsh", 64) in service.catalog()) and not (layout.root / "data" / "index" / "lsh-64" / "x").exists()
    shutil.rmtree(layout.index_dir("dcmht", 32))
    with pytest.raises(SearchError, match="there is no index for method 'dcmht' at 32 bits"):
        service.search("dcmht", 32, 3, text="a red square")
    assert ("dcmht", 32) not in service._indexes


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds none: a few dozen bytes that decode to
    gigabytes (the pixel limit must refuse it from the header alone)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_the_pixel_limit_holds_between_once_and_twice_pils_own(workspace):
    import resource

    from cmhash.search.query import SearchError

    params, layout = workspace
    service = search_service(params, layout)
    limit = params["dataset"]["max_image_pixels"]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for width, height in ((13000, 10300), (10000, 10000), (100000, 100000)):  # 1.5x, 1.1x and 112x the limit
        assert width * height > limit
        with pytest.raises(SearchError, match=f"has {width * height:,} pixels, more than dataset.max_image_pixels") as error:
            service.search("dcmht", 32, 3, image=_png_header(width, height))
        assert error.value.status == 413
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KB: nothing was decoded


def test_image_files_for_the_cli_are_checked_before_they_are_read(workspace, tmp_path, capsys):
    import resource

    params, layout = workspace
    sparse = tmp_path / "sparse.jpg"
    with open(sparse, "wb") as handle:
        handle.truncate(2 * 1024**3)  # 2 GB of nothing, allocated on no disk
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert _search(layout, "--method", "dcmht", "--bits", "32", "--image", str(sparse)) == 1
    assert "sparse.jpg is 2,147,483,648 bytes; images up to 10,485,760 bytes are accepted." in capsys.readouterr().err
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000


DAMAGES = ["truncate", "flip a byte", "delete", "a folder", "a symbolic link", "another index's file"]


@pytest.mark.parametrize("name", ["index.json", "model.pt", "ids.npy", "images.hidx", "texts.hidx"])
def test_a_damaged_index_file_is_a_message_never_a_traceback_or_a_silent_difference(workspace, capsys, name):
    params, layout = workspace
    assert _search(layout, "--method", "dcmht", "--bits", "32", "--text", "a blue star", "--k", "5") == 0
    expected = json.loads(capsys.readouterr().out)["results"]
    original = (layout.index_dir("dcmht", 32) / name).read_bytes()
    for damage in DAMAGES:
        path = layout.index_dir("dcmht", 32) / name
        if damage == "truncate":
            path.write_bytes(original[:len(original) // 2])
        elif damage == "flip a byte":
            path.write_bytes(original[:len(original) // 2] + bytes([original[len(original) // 2] ^ 0x01]) + original[len(original) // 2 + 1:])
        elif damage == "delete":
            path.unlink()
        elif damage == "a folder":
            path.unlink()
            path.mkdir()
        elif damage == "a symbolic link":
            (layout.root / "elsewhere").write_bytes(original)
            path.unlink()
            path.symlink_to(layout.root / "elsewhere")
        else:
            other = layout.index_dir("lsh", 32) / name
            path.write_bytes(other.read_bytes())
        code = _search(layout, "--method", "dcmht", "--bits", "32", "--text", "a blue star", "--k", "5")
        captured = capsys.readouterr()
        if code == 0:  # only when the damage changed nothing that matters (e.g. a flipped byte of padding)
            assert json.loads(captured.out)["results"] == expected, (name, damage)
        else:
            err = captured.err
            assert err.startswith("cmhash search: error: ") and err.count("\n") == 1 and "Traceback" not in err, (damage, err)
            assert "dcmht-32" in err and "dvc repro" in err, (damage, err)
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        elif path.exists() or path.is_symlink():
            path.unlink()
        path.write_bytes(original)


@pytest.mark.parametrize("ids, problem", [
    (np.array([-1, 2, 3]), "not 500 distinct item ids from 0 to 599"),
    (np.arange(500).reshape(250, 2), "not 500 distinct item ids"),
    (np.arange(500) + 10_000, "not 500 distinct item ids"),
    (np.zeros(500, dtype=np.int64), "not 500 distinct item ids"),
    (np.arange(500).astype(np.float64), "not 500 distinct item ids"),
    (np.array([{"x": 1}] * 500, dtype=object), "not an array of item ids"),
])
def test_crafted_ids_are_refused_even_with_a_matching_checksum(workspace, capsys, ids, problem):
    from cmhash.checksums import file_md5

    params, layout = workspace
    folder = layout.index_dir("dcmht", 32)
    np.save(folder / "ids.npy", ids, allow_pickle=True)
    info = json.loads((folder / "index.json").read_text())
    info["files"]["ids.npy"] = file_md5(folder / "ids.npy")  # as a careful attacker would
    (folder / "index.json").write_text(json.dumps(info))
    assert _search(layout, "--method", "dcmht", "--bits", "32", "--text", "a blue star") == 1
    err = capsys.readouterr().err
    assert f"ids.npy: {problem}" in err and err.count("\n") == 1, err


def test_the_server_answers_damage_and_missing_files_as_json(workspace):
    from fastapi.testclient import TestClient

    from cmhash.service.server import create_app

    params, layout = workspace
    (layout.index_dir("dcmht", 32) / "images.hidx").write_bytes(b"damaged")
    (layout.index_dir("lsh", 32) / "index.json").write_text("")
    (layout.items_dir() / "images" / "5.jpg").unlink()
    (layout.items_dir() / "images" / "6.jpg").unlink()
    (layout.items_dir() / "images" / "6.jpg").symlink_to("/etc/passwd")
    client = TestClient(create_app(search_service(params, layout)), raise_server_exceptions=False)
    models = client.get("/api/models")
    assert models.status_code == 200
    assert [entry.get("error", "") for entry in models.json()][2].startswith(f"{layout.index_dir('lsh', 32) / 'index.json'} is missing or damaged")
    for url, status, message in [
        ("/api/search?method=dcmht&bits=32&text=x", 503, "images.hidx: "),
        ("/api/search?method=lsh&bits=32&text=x", 503, "index.json: not readable JSON"),
        ("/api/search?method=nope&bits=32&text=x", 404, "indexes here: clipmh 32, dcmht 32, lsh 32"),
        ("/api/items/5/image", 404, "item 5 has no thumbnail"),
        ("/api/items/6/image", 404, "item 6 has no thumbnail"),
        ("/no/such/route", 404, "no such route"),
    ]:
        response = client.get(url)
        assert response.status_code == status and response.headers["content-type"] == "application/json", (url, response.text)
        assert message in response.json()["error"], (url, response.text)
    assert client.get("/api/items/7/image").status_code == 200


def test_batched_answers_equal_one_at_a_time_answers(workspace):
    from cmhash.search.query import SearchError
    from cmhash.service.search_service import Request

    params, layout = workspace
    service = search_service(params, layout)
    image = (layout.items_dir() / "images" / "9.jpg").read_bytes()
    requests = [Request("dcmht", 32, k, text=f"a photo of a {shape}") for k, shape in enumerate(
                    ["red square", "blue star", "green circle", "dog", "x" * 500, "sunset on a beach"] * 3, start=1)]
    requests += [Request("lsh", 32, 7, text="a red square"), Request("dcmht", 32, 4, image=image),
                 Request("clipmh", 32, 5, text="a star", image=image), Request("nope", 32, 3, text="x"),
                 Request("dcmht", 32, 0, text="x"), Request("dcmht", 32, 3, image=b"not an image")]
    batched = service.search_many(requests)
    for request, answer in zip(requests, batched):
        try:
            alone = service.search(request.method, request.bits, request.k, text=request.text, image=request.image)
        except SearchError as err:
            assert isinstance(answer, SearchError) and str(answer) == str(err) and answer.status == err.status
            continue
        assert not isinstance(answer, Exception)
        assert answer["results"] == alone["results"] and answer["notes"] == alone["notes"], request
    assert sum(isinstance(answer, SearchError) for answer in batched) == 3


# ---- a catalog that follows its index, bounded memory, one version per answer, rebuilds, JSON errors (issue 29)

@pytest.fixture
def full_workspace(project, tmp_path):
    """A copy of the whole module project (prepared data, features, models, catalog, indexes), so a
    test may rebuild the catalog and the indexes."""
    params, layout, evil_item = project
    shutil.copytree(layout.root, tmp_path / "copy")
    return params, Layout(tmp_path / "copy")


def _catalog_captions(layout) -> dict[int, list[str]]:
    """{item: captions} as data/items/items.h5 holds them now."""
    with h5py.File(layout.items_dir() / "items.h5", "r") as f:
        texts, text_item = f["texts"].asstr()[()], f["text_item"][()]
    captions: dict[int, list[str]] = {}
    for text, item in zip(texts, text_item):
        captions.setdefault(int(item), []).append(text)
    return captions


def _rewrite_captions(layout, prefix: str) -> None:
    """Another version of the prepared data's captions (as another dataset.seed gives)."""
    with h5py.File(layout.prepared("builtin"), "r+") as f:
        texts = [f"{prefix} {text}" for text in f["texts"].asstr()[()]]
        del f["texts"]
        f.create_dataset("texts", data=np.array(texts, dtype=object), dtype=h5py.string_dtype())


def test_the_catalog_follows_its_index_and_an_answer_is_one_version(full_workspace):
    """Issue 29, 10: a service that loaded an index keeps answering with that index's own catalog
    until the index is rebuilt, then answers with the new catalog; an index whose recorded catalog is
    not the one on disk is refused, never served with the other's captions."""
    from cmhash.search.query import SearchError

    params, layout = full_workspace
    service = search_service(params, layout)
    before = service.search("dcmht", 32, 5, text="a red square")["results"]
    assert all(result["captions"] == _catalog_captions(layout)[result["id"]] for result in before)
    _rewrite_captions(layout, "v2")
    stages.items.run(params, layout, progress=False)  # the catalog is rebuilt first (the index stage depends on it)
    # the index loaded before is still served with its own catalog: old ids, old captions, one version
    assert service.search("dcmht", 32, 5, text="a red square")["results"] == before
    # a service that never loaded it refuses the index that records another catalog
    with pytest.raises(SearchError, match="built with another version of the items catalog") as error:
        search_service(params, layout).search("dcmht", 32, 5, text="a red square")
    assert error.value.status == 503 and "dvc repro index" in str(error.value)
    stages.index.run(params, layout, log=lambda line: None)
    after = service.search("dcmht", 32, 5, text="a red square")["results"]
    catalog = _catalog_captions(layout)
    assert [r["id"] for r in after] == [r["id"] for r in before]
    assert all(result["captions"] == catalog[result["id"]] and result["captions"][0].startswith("v2 ") for result in after)
    assert service.item(after[0]["id"])["captions"] == catalog[after[0]["id"]]
    # a thumbnail that is not the one the catalog recorded is not served
    images = layout.items_dir() / "images"
    assert service.thumbnail(7) == (images / "7.jpg").read_bytes()
    (images / "7.jpg").write_bytes((images / "8.jpg").read_bytes())
    with pytest.raises(SearchError, match="item 7 has no thumbnail") as error:
        service.thumbnail(7)
    assert error.value.status == 404


@pytest.mark.parametrize("rebuild", ["removed", "replaced by another index"])
def test_an_index_is_loaded_from_the_files_it_checked(workspace, monkeypatch, rebuild):
    """Issue 29, 12: the index folder is rebuilt right after its files were checked (their md5 computed):
    what is loaded is still what was checked, not a mix of versions, and not a FileNotFoundError."""
    import hashlib

    params, layout = workspace
    expected = search_service(params, layout).search("dcmht", 32, 5, text="a blue star")["results"]
    folder = layout.index_dir("dcmht", 32)
    last_checked = json.loads((folder / "index.json").read_text())["files"]["model.pt"]
    real_md5, rebuilt = hashlib.md5, []

    class RebuildAfterTheCheck:
        def __init__(self, *args, **kwargs):
            self._digest = real_md5(*args, **kwargs)

        def update(self, data):
            self._digest.update(data)

        def hexdigest(self):
            digest = self._digest.hexdigest()
            if digest == last_checked and not rebuilt:
                rebuilt.append(True)
                shutil.rmtree(folder)
                if rebuild != "removed":
                    shutil.copytree(layout.index_dir("lsh", 32), folder)
            return digest

    monkeypatch.setattr(hashlib, "md5", RebuildAfterTheCheck)
    answer = search_service(params, layout).search("dcmht", 32, 5, text="a blue star")
    assert rebuilt and answer["results"] == expected


def _dvc_lock(root: Path, written: Path):
    """DVC's own lock (``.dvc/tmp/rwlock``, written by dvc's rwlock) on ``written``, as `dvc repro`
    holds it while a stage removes and writes its outputs."""
    from dvc.fs import localfs
    from dvc.rwlock import rwlock

    (root / ".dvc" / "tmp").mkdir(parents=True, exist_ok=True)
    return rwlock(str(root / ".dvc" / "tmp"), localfs, "dvc repro index", [], [str(written)], False)


def test_a_rebuild_in_progress_serves_the_loaded_version_or_says_retry(workspace):
    """Issue 29, 13: while `dvc repro` rebuilds the indexes (DVC removes data/index, then the stage
    writes it again), an index loaded before is served whole; one never loaded is a 503 with
    Retry-After; once the rebuild is over, a missing index is the usual 404."""
    from fastapi.testclient import TestClient

    from cmhash.search.query import SearchError
    from cmhash.service.server import create_app

    params, layout = workspace
    service = search_service(params, layout)
    client = TestClient(create_app(service))
    expected = client.get("/api/search", params={"text": "a blue star", "method": "dcmht", "bits": 32}).json()["results"]
    index_root = layout.root / "data" / "index"
    saved = layout.root / "saved-index"
    with _dvc_lock(layout.root, index_root):
        shutil.move(index_root, saved)  # what DVC does before the stage runs
        answer = client.get("/api/search", params={"text": "a blue star", "method": "dcmht", "bits": 32})
        assert answer.status_code == 200 and answer.json()["results"] == expected
        refused = client.get("/api/search", params={"text": "a blue star", "method": "lsh", "bits": 32})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2", refused.text
        assert refused.json()["error"] == "the index lsh-32 is being rebuilt (dvc repro is running); retry in a few seconds."
        assert client.get("/api/search", params={"text": "x", "method": "nope", "bits": 32}).status_code == 404
        index_root.mkdir()
        shutil.copytree(saved / "lsh-32", index_root / "lsh-32")  # the stage wrote one index so far
        assert client.get("/api/search", params={"text": "a blue star", "method": "lsh", "bits": 32}).status_code == 200
        assert client.get("/api/search", params={"text": "a blue star", "method": "dcmht", "bits": 32}).json()["results"] == expected
    with pytest.raises(SearchError, match="there is no index for method 'dcmht' at 32 bits") as error:
        service.search("dcmht", 32, 5, text="a blue star")  # no rebuild in progress: gone is gone
    assert error.value.status == 404 and ("dcmht", 32) not in service._indexes
    # a folder being written (cmhash.atomic's temporary), without DVC, is a rebuild in progress too
    (index_root / ".dcmht-32.0123456789ab.tmp").mkdir()
    with pytest.raises(SearchError, match="the index dcmht-32 is being rebuilt") as error:
        service.search("dcmht", 32, 5, text="a blue star")
    assert error.value.status == 503 and error.value.retry_after == 2


def _large_png(width: int = 9000, height: int = 9000) -> bytes:
    """A real image of width x height pixels (under the default pixel limit) in a few dozen KB."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (width, height), 200)
    ImageDraw.Draw(image).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=40)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=9)
    return out.getvalue()


def test_an_image_is_prepared_at_once_and_the_images_held_are_bounded(workspace):
    """Issue 29, 11: an image query becomes the encoder's small input as soon as it is read, and what
    decoding would hold is reserved first: over the limit, a 503 with Retry-After before any pixel
    is decoded."""
    from cmhash.search.query import SearchError
    from cmhash.service.search_service import DECODE_BYTES_PER_PIXEL, ImageMemory

    params, layout = workspace
    service = search_service(params, layout)
    image = (layout.items_dir() / "images" / "9.jpg").read_bytes()
    prepared = service.prepare_image(image)
    assert tuple(prepared.batch.shape) == (1, 3, 64, 64) and prepared.nbytes == 3 * 64 * 64 * 4
    assert service.search("dcmht", 32, 4, image=image)["results"] == \
        service.search_many([Request("dcmht", 32, 4, picture=prepared)])[0]["results"]
    from PIL import Image

    width, height = Image.open(io.BytesIO(image)).size
    memory = ImageMemory(limit=width * height * DECODE_BYTES_PER_PIXEL)  # exactly what decoding it may hold
    with memory.holding(1):  # one byte held already: it no longer fits
        with pytest.raises(SearchError, match="retry in a moment") as error:
            service.prepare_image(image, memory=memory)
    assert error.value.status == 503 and error.value.retry_after == 1 and memory.held == 0
    assert service.prepare_image(image, memory=memory).nbytes == prepared.nbytes
    assert memory.held == 0  # released once decoded


def test_the_batcher_bounds_its_queue_and_its_batches_bytes():
    """Issue 29, 11: at most max_waiting requests wait (then 503 with Retry-After), and a batch holds
    at most max_batch_bytes of prepared images."""
    import asyncio
    import threading

    from cmhash.search.query import SearchError
    from cmhash.service.batching import Batcher

    class SlowService:
        def __init__(self):
            self.batches, self.go = [], threading.Event()

        def search_many(self, requests):
            self.go.wait(10)
            self.batches.append([request.k for request in requests])
            return [{"k": request.k} for request in requests]

    async def scenario():
        service = SlowService()
        batcher = Batcher(service, window=0.05, max_batch=64, max_batch_bytes=100, max_waiting=5)
        first = asyncio.ensure_future(batcher.search(Request("m", 8, 0, text="x"), 0))
        await asyncio.sleep(0.2)  # the first batch is being answered; the next ones wait
        waiting = [asyncio.ensure_future(batcher.search(Request("m", 8, k, text="x"), 40)) for k in range(1, 6)]
        await asyncio.sleep(0.05)
        with pytest.raises(SearchError, match="5 searches are waiting") as error:
            await batcher.search(Request("m", 8, 99, text="x"), 0)
        assert error.value.status == 503 and error.value.retry_after == 1
        service.go.set()
        answers = await asyncio.gather(first, *waiting)
        return service.batches, answers

    batches, answers = asyncio.run(scenario())
    assert [answer["k"] for answer in answers] == [0, 1, 2, 3, 4, 5]
    assert batches == [[0], [1, 2], [3, 4], [5]]  # 40 + 40 bytes fit in 100, a third does not


def _peak_rss_since_reset(pid: int):
    """A way to read the peak resident memory of process ``pid`` from now on: the kernel's own
    (VmHWM, reset through clear_refs) where it may be reset, else sampled with psutil."""
    import threading

    import psutil

    process = psutil.Process(pid)
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")

        def peak() -> int:
            line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM:"))
            return int(line.split()[1]) * 1024

        return peak, lambda: None
    except OSError:
        highest, stop = [process.memory_info().rss], threading.Event()

        def sample():
            while not stop.is_set():
                highest[0] = max(highest[0], process.memory_info().rss)
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        return (lambda: highest[0]), stop.set


@pytest.mark.e2e  # a real server's memory under concurrent large images
def test_concurrent_large_images_hold_bounded_memory_in_the_server(served):
    """Issue 29, 11: eight concurrent 9000 x 9000 PNGs (81M pixels, under the pixel limit, 80 KB each)
    to a real server: each is answered (200) or refused for now (503 with Retry-After), and the
    server's peak memory grows by about one decoded image, not eight (before: +594 MB an image)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import psutil

    from cmhash.service.search_service import image_memory_limit

    png = _large_png()
    assert len(png) < 200_000
    httpx.post(f"{served}/api/search?method=dcmht&bits=32&k=3", content=_large_png(64, 64), timeout=60).raise_for_status()
    pid = SERVER_PIDS[served]
    baseline = psutil.Process(pid).memory_info().rss
    peak, stop = _peak_rss_since_reset(pid)

    def post(_):
        return httpx.post(f"{served}/api/search?method=dcmht&bits=32&k=3", content=png, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    grown = peak() - baseline
    stop()
    statuses = sorted(answer.status_code for answer in answers)
    assert set(statuses) <= {200, 503} and 200 in statuses, [answer.text[:200] for answer in answers]
    assert all(answer.headers.get("retry-after") == "1" for answer in answers if answer.status_code == 503)
    assert all(answer.headers["content-type"] == "application/json" for answer in answers)
    limit = image_memory_limit(89_478_485)
    print(f"statuses {statuses}; the server grew by {grown / 2**20:,.0f} MB at its peak (bound {limit / 2**20:,.0f} MB + 250)")
    assert grown < limit + 250 * 2**20, f"the server grew by {grown / 2**20:,.0f} MB (images held at most {limit / 2**20:,.0f} MB)"


def _raw_request(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as it is on a socket to the server at ``url``; its status, headers and body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(request)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.e2e  # a real server on 127.0.0.1, a raw socket
@pytest.mark.parametrize("content_length", [b"abc", b"-1", b"1e3", b"10, 20"])
def test_a_malformed_content_length_is_answered_in_json(served, content_length):
    """Issue 29, 14: what h11 cannot parse is answered by uvicorn itself; the answer is JSON too."""
    status, headers, body = _raw_request(served, b"POST /api/search?method=dcmht&bits=32 HTTP/1.1\r\nHost: x\r\n"
                                                 b"Content-Length: " + content_length + b"\r\n\r\nxyz")
    assert status == 400 and headers["content-type"] == "application/json", (status, headers, body)
    assert json.loads(body)["error"].startswith("the request is not valid HTTP/1.1")


@pytest.mark.e2e  # a real uvicorn server on 127.0.0.1, raw sockets
def test_past_the_connection_limit_the_answer_is_json_with_retry_after():
    """Issue 29, 11 and 14: uvicorn's limit_concurrency is set, and the 503 beyond it is JSON with
    Retry-After (uvicorn's own is plain text)."""
    import threading

    import uvicorn

    from cmhash.service.server import server_config

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b"{}"})

    port = _free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, limit_concurrency=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        assert _raw_request(url, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] == 200
        with socket.create_connection(("127.0.0.1", port)):  # a second connection, open: the limit is reached
            time.sleep(0.2)
            status, headers, body = _raw_request(url, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status == 503 and headers["content-type"] == "application/json" and headers["retry-after"] == "1"
        assert "its limit; retry in a moment" in json.loads(body)["error"]
    finally:
        server.should_exit = True
        thread.join(30)


def _serve(root: Path) -> tuple[subprocess.Popen, str]:
    """`cmhash serve` started in ``root`` on a free port of 127.0.0.1, once it answers."""
    import httpx

    port = _free_port()
    server = subprocess.Popen(["cmhash", "serve", "--port", str(port)], cwd=root, env={**COMMAND_ENV, "HF_HUB_OFFLINE": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/models", timeout=2).raise_for_status()
            return server, f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            assert server.poll() is None and time.monotonic() < deadline, "cmhash serve did not start"
            time.sleep(0.5)


@pytest.mark.e2e  # dvc repro twice in a scratch project, under a running `cmhash serve`
def test_a_running_service_follows_a_rebuild_with_another_seed(tmp_path):
    """Issue 29, 10 and 13, as a user meets them: `cmhash serve` runs while `dvc repro` rebuilds
    everything with another dataset.seed. Every answer during the rebuild is one version (all its
    captions from the old catalog, or all from the new), or a 503 with Retry-After; never a 404 or a
    500. After it, the answers' captions are the new catalog's."""
    import threading

    import httpx
    from conftest import run_command, scratch_project

    params = tiny_params()
    params["train"]["methods"], params["train"]["bits"] = ["lsh"], [16]
    root = scratch_project(tmp_path / "project", params)
    run_command(["dvc", "repro"], root)
    layout = Layout(root)
    old = _catalog_captions(layout)
    server, base = _serve(root)
    query = {"method": "lsh", "bits": 16, "text": "a red square", "k": 10}
    answers, stop = [], threading.Event()

    def ask_until_stopped():
        with httpx.Client(timeout=30) as client:
            while not stop.is_set() and len(answers) < 5000:
                response = client.get(f"{base}/api/search", params=query)
                answers.append((response.status_code, response.headers.get("retry-after"), response.json()))
                time.sleep(0.02)

    asker = threading.Thread(target=ask_until_stopped)
    asker.start()
    try:
        params["dataset"]["seed"] = 1
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        run_command(["dvc", "repro"], root)
        new = _catalog_captions(layout)
        assert new != old  # the rebuild changed the captions
        deadline = time.monotonic() + 30
        while not (answers and answers[-1][0] == 200 and all(result["captions"] == new[result["id"]]
                                                              for result in answers[-1][2]["results"])):
            assert time.monotonic() < deadline, answers[-1]
            time.sleep(0.5)
    finally:
        stop.set()
        asker.join(60)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    assert len(answers) > 20
    for status, retry_after, body in answers:
        if status == 200:
            results = body["results"]
            assert results and (all(r["captions"] == old.get(r["id"]) for r in results)
                                or all(r["captions"] == new.get(r["id"]) for r in results)), body
        else:
            assert status == 503 and retry_after and "being rebuilt" in body["error"], (status, body)
