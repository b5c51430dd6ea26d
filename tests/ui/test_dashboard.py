"""The dashboard in a real browser (Debian's Chromium via Playwright) against a live server and a real worker:
sign in, upload a dataset and a checkpoint with a progress bar, submit a job from the generated form, watch
the progress bar move to done, read the report and its plots, download model.onnx, find the job on the
comparison page; a wrong key gives an error page, never a stack trace; /docs renders with no network."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import onnx
import pytest

pytestmark = pytest.mark.timeout(240)

MEAN, STD = "0.485,0.456,0.406", "0.229,0.224,0.225"  # the shared ResNet-20 was trained with these


@pytest.fixture
def page(browser: Any, live: dict[str, Any]) -> Any:
    context = browser.new_context(base_url=live["url"], viewport={"width": 1280, "height": 900}, accept_downloads=True)
    p = context.new_page()
    p.set_default_timeout(20_000)
    yield p
    context.close()


def sign_in(page: Any, key: str, shot: Any = None) -> None:
    page.goto("/ui/jobs")
    page.wait_for_url("**/ui/login")
    page.fill("#api-key", key)
    if shot is not None:
        shot(page, "login")
    page.click("#login-form button[type=submit]")


def upload(page: Any, path: Path, **fields: str) -> str:
    """Upload ``path`` with the form on the current page; the new row's id."""
    before = page.locator("#list tbody tr[data-id]").count()
    page.set_input_files("#upload-file", str(path))
    for name, value in fields.items():
        page.locator(f"#upload-form [name={name}]").fill(value) if name != "arch" else page.select_option(
            "#upload-arch", value)
    page.click("#upload-form button[type=submit]")
    page.wait_for_function("document.querySelector('#upload-status').textContent.startsWith('uploaded')")
    assert page.eval_on_selector("#upload-progress", "e => e.value") == 1
    page.wait_for_function(f"document.querySelectorAll('#list tbody tr[data-id]').length > {before}")
    return page.locator("#list tbody tr[data-id]").first.get_attribute("data-id")


def fill_job_form(page: Any, model_id: str, dataset_id: str) -> None:
    page.goto(f"/ui/jobs/new?model={model_id}")
    page.wait_for_selector("#method-options label.opt")
    page.select_option("#f-method", "l1")
    assert page.locator("#opt-seed").input_value() == "0"  # generated from GET /v1/methods with its default
    page.check("input[name=target][value=ratio]")
    page.fill("#f-pruning_ratio", "0.3")
    page.select_option("#f-eval_dataset_id", dataset_id)
    page.select_option("#f-train_dataset_id", dataset_id)
    page.fill("#f-batch_size", "25")
    page.check("#f-finetune")
    page.fill("#ft-epochs", "2")
    page.fill("#ft-batch_size", "10")
    page.fill("#ft-max_steps_per_epoch", "3")


def test_sign_in_upload_run_watch_report_download_compare(page: Any, live: dict[str, Any],
                                                          ui_files: dict[str, Path], shot: Any,
                                                          tmp_path: Path) -> None:
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    sign_in(page, live["key"], shot)
    page.wait_for_url("**/ui/jobs")
    page.goto("/ui/datasets")
    dataset_id = upload(page, ui_files["data"])
    shot(page, "datasets")
    page.goto("/ui/models")
    page.wait_for_selector("#upload-arch option[value=cifar_resnet20]", state="attached")
    model_id = upload(page, ui_files["ckpt"], arch="cifar_resnet20", mean=MEAN, std=STD)
    shot(page, "models")
    fill_job_form(page, model_id, dataset_id)
    shot(page, "new_job")
    page.click("#submit-job")
    page.wait_for_url(re.compile(r".*/ui/jobs/job_\w+$"))
    job_id = page.url.rsplit("/", 1)[-1]
    page.wait_for_function("document.querySelector('#job-status').textContent === 'succeeded'", timeout=180_000)
    log = page.evaluate("window.progressLog")
    assert log[-1] == 1 and log == sorted(log), log
    assert any(0 < v < 1 for v in log), f"the bar never showed a step between 0 and 1: {log}"
    page.wait_for_function("[...document.querySelectorAll('#plots img')].length >= 2 && "
                           "[...document.querySelectorAll('#plots img')].every(i => i.complete && i.naturalWidth > 0)")
    assert "Accuracy after" in page.inner_text("#summary") and page.locator("#layers tbody tr").count() > 5
    shot(page, "job")
    with page.expect_download() as dl:
        page.click("a[data-artifact='model.onnx']")
    dest = tmp_path / "model.onnx"
    dl.value.save_as(dest)
    onnx.checker.check_model(onnx.load(str(dest)))
    page.click("#compare-link")
    page.wait_for_selector(f"#compare-table tr[data-job={job_id}]")
    assert page.locator(f"#plot-flops circle[data-job={job_id}]").count() == 1
    shot(page, "compare")
    page.goto("/ui/jobs")
    page.wait_for_selector(f"#list tr[data-id={job_id}]")
    shot(page, "jobs")
    assert not [u for u in urls if live["key"] in u], "the API key appeared in a URL"


def test_a_wrong_key_shows_an_error_page_not_a_stack_trace(page: Any, shot: Any) -> None:
    sign_in(page, "sp_not_a_real_key")
    page.wait_for_selector("#error:not([hidden])")
    assert "401" in page.inner_text("#error-title")
    assert "invalid or revoked API key" in page.inner_text("#error-detail")
    page.evaluate("sessionStorage.setItem('simprune.apiKey', 'sp_wrong_again')")
    page.goto("/ui/jobs/job_does_not_exist")
    page.wait_for_selector("#error:not([hidden])")
    text = page.inner_text("body")
    assert "401" in text and "Traceback" not in text and "File \"" not in text
    shot(page, "error")


def test_docs_render_with_no_network(page: Any, live: dict[str, Any], shot: Any) -> None:
    blocked: list[str] = []

    def only_local(route: Any) -> None:
        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.context.route("**/*", only_local)
    page.goto("/docs")
    page.wait_for_selector(".opblock-summary")
    assert page.locator(".opblock").count() >= 10
    assert page.locator("button.authorize").count() == 1  # the bearer scheme is declared
    assert page.get_by_text("Submit a job").count() >= 1
    shot(page, "docs")
    page.goto("/redoc")
    page.get_by_role("heading", name="Upload a checkpoint").wait_for()
    assert blocked == [], blocked
