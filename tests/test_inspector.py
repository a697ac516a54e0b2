"""The context inspector, driven in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
which setup.sh installs, through Selenium): the live page `/ui` of a running service, and the HTML report
that `ragctx compress/query --html` write. What the page highlights must be exactly what the JSON says
was kept, and its token counts must be the response's."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from ragctx.api import create_app
from ragctx.cli import app
from ragctx.evaluation.metrics import has_answer
from ragctx.indexes.faiss_index import FaissIndex
from ragctx.indexes.loaders import read_documents
from ragctx.sample import sample_corpus_path, sample_request
from ragctx.settings import load_settings
from tests.test_api import running

pytestmark = pytest.mark.slow

API_KEY = "inspector-test-key"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

if not (CHROMIUM and DRIVER):
    if os.environ.get("CI"):  # setup.sh installs them: in CI their absence is a failure, not a skip
        raise RuntimeError("chromium and chromium-driver are missing; setup.sh should have installed them")
    pytest.skip("needs Debian's chromium and chromium-driver (setup.sh installs them)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service as DriverService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=DriverService(str(DRIVER)), options=options)
    driver.set_script_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory: pytest.TempPathFactory, registry) -> Path:
    directory = tmp_path_factory.mktemp("inspector") / "index"
    FaissIndex.build(
        directory, read_documents([sample_corpus_path()], chunk_words=120), registry.embedder(), embedder_name="default"
    ).close()
    return directory


@pytest.fixture(scope="module")
def service_url(sample_index: Path, registry) -> Iterator[str]:
    """The service over the bundled sample index, with an API key (the page must carry it)."""
    settings = load_settings(index_dir=sample_index, api_keys=[API_KEY])
    with running(create_app(settings, registry)) as url:
        yield url


def console_errors(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def open_page(driver: webdriver.Chrome, url: str) -> None:
    driver.get(f"{url}/ui")
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "run"))
    driver.get_log("browser")  # start each test with an empty console


def fill(driver: webdriver.Chrome, element_id: str, value: str) -> None:
    element = driver.find_element(By.ID, element_id)
    element.clear()
    element.send_keys(value)


def submit_and_wait(driver: webdriver.Chrome, panes: int = 1) -> list[dict[str, Any]]:
    status = driver.find_element(By.ID, "status")
    driver.find_element(By.ID, "run").click()
    WebDriverWait(driver, 180).until(lambda d: status.text.startswith(("Done", "Error")))
    assert status.text.startswith("Done"), status.text
    assert len(driver.find_elements(By.CSS_SELECTOR, "#results .pane")) == panes
    responses: list[dict[str, Any]] = driver.execute_script("return window.ragctxResponses")
    return responses


def shown(pane) -> dict[str, Any]:
    """What one pane shows: kept passages in order with their highlighted [start, end) and text, the
    passages shown as dropped, and the token counts."""
    kept = []
    for article in pane.find_elements(By.CSS_SELECTOR, "ol.passages > li > article.passage:not(.dropped-passage)"):
        marks = article.find_elements(By.CSS_SELECTOR, "mark.kept")
        kept.append(
            (
                article.get_attribute("data-passage-id"),
                [(int(m.get_attribute("data-start")), int(m.get_attribute("data-end"))) for m in marks],
                [m.get_attribute("textContent").removeprefix("[kept] ") for m in marks],
            )
        )
    dropped = [
        a.get_attribute("data-passage-id") for a in pane.find_elements(By.CSS_SELECTOR, "article.dropped-passage")
    ]
    assert all(
        not a.find_elements(By.CSS_SELECTOR, "mark")
        for a in pane.find_elements(By.CSS_SELECTOR, "article.dropped-passage")
    )
    field = {
        f: pane.find_element(By.CSS_SELECTOR, f"[data-field={f}]").get_attribute("textContent")
        for f in ("tokens_in", "tokens_out", "saved")
    }
    return {"kept": kept, "dropped": dropped, **{k: int(v) for k, v in field.items()}}


def expected(response: dict[str, Any]) -> dict[str, Any]:
    kept = [
        (p["id"], [(s["start"], s["end"]) for s in p["spans"]], [s["text"] for s in p["spans"]])
        for p in response["passages"]
        if p["spans"]
    ]
    dropped = [p["id"] for p in response["passages"] if not p["spans"]]
    return {
        "kept": kept,
        "dropped": dropped,
        "tokens_in": response["tokens_in"],
        "tokens_out": response["tokens_out"],
        "saved": response["tokens_in"] - response["tokens_out"],
    }


def test_the_page_highlights_exactly_the_spans_the_json_response_kept(browser, service_url):
    open_page(browser, service_url)
    fill(browser, "api-key", API_KEY)
    browser.find_element(By.ID, "sample").click()
    fill(browser, "value-a", "0.25")
    (response,) = submit_and_wait(browser)
    pane = browser.find_element(By.CSS_SELECTOR, "#results .pane")
    want = expected(response)
    assert want["kept"] and want["dropped"], "the sample keeps some passages and drops others"
    assert shown(pane) == want
    # The page sends what any client sends: the same request from Python gets the same context.
    sample = sample_request()
    passages = [{"id": f"p{i}", "title": p["title"], "text": p["text"]} for i, p in enumerate(sample["passages"], 1)]
    direct = httpx.post(
        f"{service_url}/v1/compress",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=120,
        json={"question": sample["question"], "passages": passages, "rate": 0.25},
    ).json()
    assert direct["context"] == response["context"]
    assert "Raymond Unwin" in " ".join(t for _, _, texts in want["kept"] for t in texts)
    # Kept text is marked by weight and underline too, not by colour alone; dropped text is struck through.
    mark = pane.find_element(By.CSS_SELECTOR, "mark.kept")
    assert int(mark.value_of_css_property("font-weight")) >= 700
    assert "underline" in mark.value_of_css_property("text-decoration-line")
    dropped_text = pane.find_element(By.CSS_SELECTOR, "span.dropped, .dropped-passage .ptext")
    assert "line-through" in dropped_text.value_of_css_property("text-decoration-line")
    assert console_errors(browser) == []


def test_two_methods_side_by_side_each_match_their_own_response(browser, service_url):
    open_page(browser, service_url)
    fill(browser, "api-key", API_KEY)
    browser.find_element(By.ID, "sample").click()
    browser.find_element(By.ID, "compare").click()
    fill(browser, "method-b", "bm25")
    fill(browser, "value-b", "0.1")
    responses = submit_and_wait(browser, panes=2)
    panes = browser.find_elements(By.CSS_SELECTOR, "#results .pane")
    assert [shown(p) for p in panes] == [expected(r) for r in responses]
    headings = [p.find_element(By.TAG_NAME, "h2").text for p in panes]
    assert "bm25" in headings[1] and "rate 0.1" in headings[1] and "(default)" in headings[0]
    assert responses[1]["tokens_out"] < responses[0]["tokens_out"]


def test_the_page_queries_the_index_and_shows_retrieved_passages_in_place(browser, service_url):
    open_page(browser, service_url)
    fill(browser, "api-key", API_KEY)
    fill(browser, "question", "who designed the garden city of new earswick")
    browser.find_element(By.CSS_SELECTOR, "input[name=source][value=index]").click()
    (response,) = submit_and_wait(browser)
    assert all(isinstance(p["text"], str) for p in response["passages"])  # include_text: texts to show
    pane = browser.find_element(By.CSS_SELECTOR, "#results .pane")
    assert shown(pane) == expected(response)
    assert "Unwin" in response["context"]


def test_errors_are_shown_with_the_services_message(browser, service_url):
    open_page(browser, service_url)
    browser.find_element(By.ID, "sample").click()
    status = browser.find_element(By.ID, "status")
    # No key (the tab remembers the last one typed): the service's 401 message is shown, nothing crashes.
    browser.find_element(By.ID, "api-key").clear()
    browser.find_element(By.ID, "run").click()
    WebDriverWait(browser, 60).until(lambda d: "401" in status.text)
    assert "API key" in status.text
    # A rate out of range: the 422 names the value and the range.
    fill(browser, "api-key", API_KEY)
    fill(browser, "value-a", "2")
    browser.find_element(By.ID, "run").click()
    WebDriverWait(browser, 60).until(lambda d: "422" in status.text)
    assert "rate 2" in status.text and "(0, 1]" in status.text
    # Passages that are not valid JSON are refused in the page, before any request.
    fill(browser, "value-a", "0.25")
    fill(browser, "passages", "[{broken")
    browser.find_element(By.ID, "run").click()
    WebDriverWait(browser, 10).until(lambda d: "not valid JSON" in status.text)


def test_passage_text_is_shown_as_text_never_run_as_html(browser, service_url):
    open_page(browser, service_url)
    fill(browser, "api-key", API_KEY)
    fill(browser, "question", "what does the image do")
    hostile = '<img src=x onerror="window.pwned=1">The image tag does nothing here.</script><b>bold?</b>'
    browser.find_element(By.ID, "passages").send_keys(json.dumps([hostile]))
    fill(browser, "value-a", "1")
    submit_and_wait(browser)
    assert browser.execute_script("return window.pwned === undefined")
    assert not browser.find_elements(By.CSS_SELECTOR, "#results img, #results b")
    assert hostile in browser.find_element(By.CSS_SELECTOR, "#results .ptext").get_attribute("textContent")


def test_the_page_works_by_keyboard_alone(browser, service_url):
    open_page(browser, service_url)
    body = browser.find_element(By.TAG_NAME, "body")
    body.click()
    reached = []
    for _ in range(30):
        browser.switch_to.active_element.send_keys(Keys.TAB)
        reached.append(browser.switch_to.active_element.get_attribute("id"))
    for control in ("question", "passages", "method-a", "value-a", "compare", "api-key", "run", "sample"):
        assert control in reached, f"{control} is not reachable with Tab ({reached})"
    fill(browser, "api-key", API_KEY)
    browser.find_element(By.ID, "sample").send_keys(Keys.ENTER)  # a button works from the keyboard
    assert browser.find_element(By.ID, "question").get_attribute("value")
    browser.find_element(By.ID, "run").send_keys(Keys.ENTER)
    WebDriverWait(browser, 180).until(lambda d: d.find_element(By.ID, "status").text.startswith("Done"))


def test_the_page_renders_at_a_phones_width_without_console_errors(browser, service_url):
    from PIL import Image

    browser.set_window_size(390, 844)
    try:
        open_page(browser, service_url)
        fill(browser, "api-key", API_KEY)
        browser.find_element(By.ID, "sample").click()
        browser.find_element(By.ID, "compare").click()
        submit_and_wait(browser, panes=2)
        width = browser.execute_script("return document.documentElement.clientWidth")
        assert browser.execute_script("return document.documentElement.scrollWidth") <= width, "scrolls sideways"
        left = [p.location["x"] for p in browser.find_elements(By.CSS_SELECTOR, "#results .pane")]
        assert left[0] == left[1], "the two panes stack at a phone's width"
        png = browser.get_screenshot_as_png()
        image = Image.open(io.BytesIO(png)).convert("L")
        low, high = image.getextrema()
        assert high - low > 100, "the screenshot is blank"
        assert console_errors(browser) == []
    finally:
        browser.set_window_size(1280, 1000)


def test_ui_is_served_with_a_strict_content_security_policy(service_url):
    response = httpx.get(f"{service_url}/ui")  # public: a browser cannot send the key on navigation
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "unsafe-inline" not in policy
    # Nothing is loaded from elsewhere (no CDN); the SVG namespace URI is a name, not a fetch.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import""", response.text)
    assert httpx.post(f"{service_url}/v1/compress", json={"question": "q", "passages": []}).status_code == 401


def test_compress_writes_a_self_contained_report_that_matches_its_jsonl(browser, nq20_rows, settings, tmp_path):
    rows = nq20_rows[:4]
    src, dst, html = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "report.html"
    src.write_text("".join(json.dumps({k: r[k] for k in ("question", "answers", "passages")}) + "\n" for r in rows))
    config = tmp_path / "ragctx.toml"
    config.write_text(f'cache_dir = "{settings.cache_dir}"\nindex_dir = "{settings.index_dir}"\n')
    args = ["compress", "-i", str(src), "-o", str(dst), "--rate", "0.1", "-c", str(config), "--html", str(html)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    outputs = [json.loads(line) for line in dst.read_text().splitlines()]
    browser.get(html.as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "section.question"))
    sections = browser.find_elements(By.CSS_SELECTOR, "section.question")
    assert len(sections) == len(rows)
    for section, out in zip(sections, outputs, strict=True):
        section.find_element(By.TAG_NAME, "summary").click()  # open each question's section
        assert shown(section.find_element(By.CSS_SELECTOR, ".pane")) == expected(out)
    kept_answers = sum(has_answer(o["context"], r["answers"]) for o, r in zip(outputs, rows, strict=True))
    caption = browser.find_element(By.CSS_SELECTOR, "[data-field=plot-caption]").text
    assert f"answer kept in {100 * kept_answers / len(rows):.1f} % ({kept_answers} of {len(rows)})" in caption
    bars = browser.find_elements(By.CSS_SELECTOR, "figure.plot rect[data-question]")
    assert [b.get_attribute("data-answer") for b in bars] == [
        str(has_answer(o["context"], r["answers"])).lower() for o, r in zip(outputs, rows, strict=True)
    ]
    assert console_errors(browser) == []


def test_query_writes_a_report_of_one_question(browser, sample_index, settings, tmp_path):
    html = tmp_path / "q.html"
    config = tmp_path / "ragctx.toml"
    config.write_text(f'cache_dir = "{settings.cache_dir}"\nindex_dir = "{sample_index}"\n')
    question = "who designed the garden city of new earswick"
    result = CliRunner().invoke(
        app, ["query", question, "--budget", "200", "-c", str(config), "--json", "--html", str(html)]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{") :])
    browser.get(html.as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".pane"))
    assert shown(browser.find_element(By.CSS_SELECTOR, ".pane")) == expected(out)
    assert "budget 200" in browser.find_element(By.CSS_SELECTOR, ".pane h2").text
    assert console_errors(browser) == []


def test_a_bad_report_path_fails_before_any_work_and_writes_nothing(tmp_path, settings):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"question": "q", "passages": [{"id": "a", "text": "t"}]}) + "\n")
    result = CliRunner().invoke(
        app, ["compress", "-i", str(src), "-o", str(tmp_path / "o.jsonl"), "--html", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert not (tmp_path / "o.jsonl").exists()


def test_include_text_adds_the_passage_texts_and_only_when_asked(service_url):
    passages = [{"id": "a", "text": "Paris is the capital of France. It is large."}, {"id": "b", "text": "Bananas."}]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"question": "capital of france", "passages": passages, "method": "budget", "rate": 0.5}
    plain = httpx.post(f"{service_url}/v1/compress", json=body, headers=headers, timeout=60).json()
    assert all("text" not in p for p in plain["passages"])
    full = httpx.post(
        f"{service_url}/v1/compress", json=body | {"include_text": True}, headers=headers, timeout=60
    ).json()
    assert {p["id"]: p["text"] for p in full["passages"]} == {p["id"]: p["text"] for p in passages}
    assert [p["spans"] for p in full["passages"]] == [p["spans"] for p in plain["passages"]]
