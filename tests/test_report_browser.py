"""The HTML report in a real browser (headless Chromium from the system packages, driven by selenium): the page
loads with no console errors, every video becomes playable with the clip's duration and decodes its sound when
its row's play button is pressed, the metrics table holds the JSON's numbers, and the screenshot is not blank.

The page compares two tiny results folders: one in H.264/AAC (played as written) and one whose generated videos
are MPEG-4 Part 2 (upstream's OpenCV writer), which Chromium refuses: played from their VP9/Opus web copies."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest

from tav.report import build_report

from .browser import chrome, require_browser_or_skip
from .report_fixtures import FPS, FRAMES, as_mpeg4, make_results

VIDEO_STATE = """
return Array.from(document.querySelectorAll('video')).map(v => ({
  src: v.currentSrc, ready: v.readyState, duration: v.duration, error: v.error && v.error.code,
  audio: v.webkitAudioDecodedByteCount, video: v.webkitVideoDecodedByteCount, time: v.currentTime}));
"""


def _wait(driver, script: str, timeout: float = 20.0):
    end = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value or time.monotonic() > end:
            return value
        time.sleep(0.1)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    require_browser_or_skip()
    tmp = tmp_path_factory.mktemp("browser")
    runs = [make_results(tmp / "17_tav_URMP", n=2), make_results(tmp / "mpeg4_run", n=2, seed0=300)]
    for video in [*(runs[1] / "fake_stage1").glob("*.mp4"), *(runs[1] / "fake_stage2").glob("*.mp4")]:
        as_mpeg4(video)
    return build_report(runs, tmp / "report"), runs


def _states_after_play(driver, url: str, timeout: float = 20.0) -> list[dict]:
    from selenium.webdriver.common.by import By

    driver.get(url)
    for button in driver.find_elements(By.CSS_SELECTOR, "button.play"):
        driver.execute_script("arguments[0].scrollIntoView()", button)
        button.click()
    _wait(driver, "return Array.from(document.querySelectorAll('video')).every(v => v.error || (v.readyState >= 2 "
                  "&& v.webkitAudioDecodedByteCount > 0 && v.webkitVideoDecodedByteCount > 0 && v.currentTime > 0))",
          timeout)
    return driver.execute_script(VIDEO_STATE)


def test_originals_that_chromium_refuses(report, tmp_path):
    """Without web copies the MPEG-4 Part 2 files do not show here: Chromium plays their sound over a black frame
    (no video byte decoded, no error raised), so the copies are needed."""
    _, runs = report
    plain = build_report([runs[1]], tmp_path / "plain", web="never")
    driver = chrome(str(tmp_path / "profile"))
    try:
        states = _states_after_play(driver, plain.index.resolve().as_uri(), timeout=3.0)
    finally:
        driver.quit()
    assert len(states) == 6
    made = [s for s in states if "/real/" not in s["src"]]
    assert len(made) == 4 and all(s["video"] == 0 and s["audio"] > 0 for s in made)
    assert all(s["video"] > 0 for s in states if "/real/" in s["src"])


def test_report_plays_in_chromium(report, tmp_path):
    from PIL import Image

    rep, runs = report
    assert rep.web_copies == 4
    driver = chrome(str(tmp_path / "profile"))
    try:
        states = _states_after_play(driver, rep.index.resolve().as_uri())
        assert len(states) == 2 * 5  # per sample: real + two folders x (stage 1, stage 2)
        for s in states:
            assert s["error"] is None and s["ready"] >= 2, s
            assert s["duration"] == pytest.approx(FRAMES / FPS, abs=1 / FPS), s
            assert s["audio"] > 0 and s["video"] > 0, s
        assert sum(s["src"].endswith(".webm") for s in states) == 4
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        # the metrics table as the browser renders it holds the JSON's numbers
        cells = driver.execute_script(
            "return Array.from(document.querySelectorAll('table.metrics tr')).map("
            "r => Array.from(r.cells).map(c => c.textContent))")
        fvd = [r for r in cells if r and r[0] == "fvd"]
        assert [float(r[2]) for r in fvd] == pytest.approx([123.5, 7.891])
        judged = json.loads((runs[1] / "metrics_synthetic.json").read_text())["folders"]
        shape = next(r for r in cells if r[:2] == ["shape_acc", "fake_stage2"])
        assert float(shape[5]) == pytest.approx(judged["fake_stage2"]["shape_acc"], rel=1e-3)
        # a screenshot that is not blank: a good share of pixels differ from the page background
        driver.execute_script("window.scrollTo(0, document.querySelector('section.sample').offsetTop)")
        shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"), dtype=np.int16)
        background = np.array([0xFA, 0xFA, 0xFA])
        assert (np.abs(shot - background).sum(-1) > 30).mean() > 0.1
    finally:
        driver.quit()
