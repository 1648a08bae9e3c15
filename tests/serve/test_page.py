"""The web chat page in a real headless Chromium: upload the sample image, ask, read the streamed answer."""

from __future__ import annotations

import openai
from playwright.sync_api import sync_playwright

from serving import SAMPLE, live_server, sample_data_url
from vlbridge.serve.auth import APIKey, KeyStore

KEY = "page-key-0123456789"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def test_page_streams_the_answer_to_an_image_question() -> None:
    question = "What shape is top right?"
    with live_server(keys=KeyStore([APIKey(KEY, "page", frozenset({"text", "image"}))])) as url:
        parts = [{"type": "image_url", "image_url": {"url": sample_data_url()}}, {"type": "text", "text": question}]
        expected = openai.OpenAI(base_url=url + "/v1", api_key=KEY).chat.completions.create(
            model="m", messages=[{"role": "user", "content": parts}], temperature=0
        )
        # no skip: if the browser cannot start, this test fails (CI installs chromium, .ci/run)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(url + "/")
                page.fill("#key", KEY)
                page.set_input_files("#image", str(SAMPLE))
                page.wait_for_function("document.getElementById('preview').src.startsWith('data:image/png')")
                page.fill("#question", question)
                page.click("#ask")
                page.wait_for_selector("#answer[data-done=true]", timeout=60_000)
                assert page.text_content("#error") == ""
                answer = page.text_content("#answer")
            finally:
                browser.close()
    assert answer == expected.choices[0].message.content
    assert answer
