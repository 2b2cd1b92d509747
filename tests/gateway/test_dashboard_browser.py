"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against
the running mesh (speech recognition with the small Whisper, synthesis with the tiny
random Dia). Chromium's fake microphone plays tests/fixtures/speech_mic.wav
("hello world, this is a test.", espeak-ng), so the recorder makes a real
MediaRecorder WebM/Opus recording of speech.

When a check fails, a screenshot of each page is kept under var/test-artifacts/.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import re
import uuid

import aiohttp
import asyncpg
import pytest

from tests.gateway.conftest import FIXTURES, HELLO, Account, created, extra_gateway, make_key, upload_form, wait_for_models, words

playwright = pytest.importorskip("playwright.async_api")

CHROMIUM = pathlib.Path("/usr/bin/chromium")
MICROPHONE = FIXTURES / "speech_mic.wav"
ARTIFACTS = pathlib.Path(__file__).resolve().parents[2] / "var" / "test-artifacts"
PAGES = ("library", "playground", "history")
SLOW = 90_000  # ms: speech recognition and generation on a busy CPU

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium (make test installs it)")


@pytest.fixture(scope="module")
async def browser():
    async with playwright.async_playwright() as driver:
        browser = await driver.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={MICROPHONE}",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        yield browser
        await browser.close()


@pytest.fixture
async def user(key_env) -> Account:
    name = f"dash-{uuid.uuid4().hex[:8]}"
    return Account(name, make_key(name, key_env))


class Tab:
    """A browser context on the dashboard, with what the page reported (script errors, CSP violations)."""

    def __init__(self, page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.problems: list[str] = []
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("console", lambda message: message.type == "error" and self.problems.append(f"console: {message.text}"))

    async def sign_in(self, key: str) -> None:
        await self.page.goto(self.base_url + "/")
        await self.page.get_by_label("API key").fill(key)
        await self.page.get_by_role("button", name="Sign in").click()
        await self.opened("library")

    async def open(self, name: str) -> None:
        await self.page.goto(f"{self.base_url}/#{name}")
        await self.opened(name)

    async def opened(self, name: str) -> None:
        await self.page.wait_for_selector(f"body[data-page={name}]", timeout=SLOW)

    def sample(self, speaker: str):
        return self.page.locator("li.sample", has=self.page.get_by_role("heading", name=speaker, exact=True))

    def assert_clean(self, allowed: tuple[str, ...] = ()) -> None:
        problems = [problem for problem in self.problems if not any(text in problem for text in allowed)]
        assert problems == [], problems


@pytest.fixture
async def tab(browser, mesh):
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    tab = Tab(await context.new_page(), mesh.http_url)
    yield tab
    await context.close()


@contextlib.asynccontextmanager
async def screenshots_on_failure(tab: Tab, test: str):
    """Keep a screenshot of every page when a check inside fails."""
    try:
        yield
    except BaseException:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):
            await tab.page.screenshot(path=ARTIFACTS / f"{test}-at-failure.png", full_page=True)
            for name in PAGES:
                await tab.page.goto(f"{tab.base_url}/#{name}")
                await tab.page.wait_for_timeout(1500)
                await tab.page.screenshot(path=ARTIFACTS / f"{test}-{name}.png", full_page=True)
        raise


async def until(page, expression: str, timeout: float = 10):
    """The expression's value once it is truthy. (Playwright's wait_for_function compiles its
    predicate in the page, which the dashboard's CSP forbids; evaluate() is not affected.)"""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := await page.evaluate(expression)):
        assert asyncio.get_running_loop().time() < deadline, f"still false after {timeout} s: {expression}"
        await asyncio.sleep(0.1)
    return value


async def samples_of(http, account: Account) -> dict[str, dict]:
    body = await created(await http.get("/v1/voice/samples", params={"page_size": 100}, headers=account.headers))
    return {sample["speaker_name"]: sample for sample in body["voice_samples"]}


HELLO_TRANSCRIPT = "Hello world, this is a voice sample for testing."


async def add_samples(http, account: Account, names, default: str = "") -> dict[str, dict]:
    """Samples uploaded through the API (HELLO, with its transcript typed), by speaker name."""
    added = {}
    for name in names:
        body = await created(await upload_form(
            http, account, HELLO, name, transcript=HELLO_TRANSCRIPT, is_default="true" if name == default else "false"
        ))
        added[name] = body
    return added


# Text that runs out of its box: each visible error, notice, hint, progress line and sample
# heading whose text is wider than the element, or that reaches past its card (or the screen).
OVERFLOWING = """() => [...document.querySelectorAll('.error, .notice, .hint, .progress, .meta, .sample h3')]
    .filter(el => el.getClientRects().length && el.textContent.trim())
    .filter(el => {
        const box = el.getBoundingClientRect();
        const range = document.createRange();
        range.selectNodeContents(el);
        const text = range.getBoundingClientRect();
        const frame = (el.closest('.card') || document.documentElement).getBoundingClientRect();
        return el.scrollWidth > el.clientWidth || text.right > box.right + 1 || Math.max(box.right, text.right) > frame.right + 1;
    })
    .map(el => `${el.id || el.className}: ${el.textContent.slice(0, 50)} (${el.scrollWidth} > ${el.clientWidth} px)`)"""


# --- signing in -----------------------------------------------------------------------


async def test_a_wrong_key_is_refused_and_a_right_one_signs_in_for_the_session(tab, user):
    page = tab.page
    async with screenshots_on_failure(tab, "sign-in"):
        await page.goto(tab.base_url + "/")
        await page.get_by_label("API key").fill("vm_not_a_real_key")
        await page.get_by_role("button", name="Sign in").click()
        await playwright.expect(page.locator("#signin-error")).to_contain_text("not accepted")
        await playwright.expect(page.locator("#app")).to_be_hidden()

        # By keyboard alone: the key field has the focus, Enter signs in.
        await page.get_by_label("API key").fill("")
        await page.keyboard.type(user.key)
        await page.keyboard.press("Enter")
        await tab.opened("library")
        await playwright.expect(page.get_by_role("heading", name="Voice library")).to_be_visible()
        await page.keyboard.press("Tab")  # from the page's start to its first control: the file chooser
        assert await page.evaluate("document.activeElement.id") == "upload-file"
        await page.reload()  # kept for the browser session
        await tab.opened("library")
        await page.get_by_role("button", name="Sign out").click()
        await playwright.expect(page.get_by_label("API key")).to_be_visible()
        assert await page.evaluate("sessionStorage.length") == 0
    tab.assert_clean(allowed=("401",))  # the refused key's request is logged by the browser


# --- voice library ----------------------------------------------------------------------


async def test_a_recording_in_the_browser_becomes_a_sample_with_its_words_transcribed(tab, user, http):
    page = tab.page
    async with screenshots_on_failure(tab, "record"):
        await tab.sign_in(user.key)
        # A first take, thrown away.
        await page.get_by_role("button", name="Record").click()
        await page.wait_for_timeout(500)
        await page.get_by_role("button", name="Stop").click()
        await playwright.expect(page.locator("#upload-chosen")).to_be_visible()
        await page.get_by_role("button", name=re.compile("^Re-record")).click()
        await playwright.expect(page.locator("#upload-chosen")).to_be_hidden()

        await page.get_by_role("button", name="Record").click()
        await playwright.expect(page.locator("#record-status")).to_contain_text("Recording")
        # The level meter moves with the fake microphone's speech.
        await until(page, "document.querySelector('#record-level').value > 0.01")
        await page.wait_for_timeout(3300)  # the clip is 3.5 s long, silence around the speech
        await page.get_by_role("button", name="Stop").click()
        preview = page.locator("#upload-preview")
        await playwright.expect(preview).to_have_attribute("src", re.compile("^blob:"))
        await page.locator("#upload-speaker").fill("Mic")
        await page.get_by_role("button", name="Upload sample").click()

        card = tab.sample("Mic")
        await playwright.expect(card).to_be_visible(timeout=SLOW)
        transcript = await card.locator("textarea").input_value()
        # The tiny Whisper hears espeak-ng's "hello" as "hello", "for low" or "the low"; the rest it gets.
        assert {"world", "this", "test"} <= words(transcript), transcript
        await playwright.expect(card.locator("canvas.waveform")).to_have_attribute("data-drawn", "true")
        stored = (await samples_of(http, user))["Mic"]
        assert stored["original_format"].startswith("webm") and stored["duration_seconds"] > 1
        assert stored["transcript_source"] == "stt"
    tab.assert_clean()


async def test_upload_by_picker_and_by_drop_then_default_edit_and_delete(tab, user, http):
    page = tab.page
    async with screenshots_on_failure(tab, "library"):
        await tab.sign_in(user.key)
        # By the file picker, with the transcript left to speech recognition.
        await page.locator("#upload-file").set_input_files(FIXTURES / "speech_fox.wav")
        await page.locator("#upload-speaker").fill("Fox")
        await page.get_by_role("button", name="Upload sample").click()
        fox = tab.sample("Fox")
        await playwright.expect(fox).to_be_visible(timeout=SLOW)
        assert {"quick", "brown"} & words(await fox.locator("textarea").input_value())

        # By drag and drop, with a typed transcript.
        data = list((FIXTURES / "speech_hello.wav").read_bytes())
        transfer = await page.evaluate_handle(
            """bytes => { const t = new DataTransfer();
                t.items.add(new File([new Uint8Array(bytes)], "hello.wav", {type: "audio/wav"})); return t; }""",
            data,
        )
        await page.locator("#dropzone").dispatch_event("drop", {"dataTransfer": transfer})
        await playwright.expect(page.locator("#upload-chosen-name")).to_contain_text("hello.wav")
        await page.locator("#upload-speaker").fill("Hello")
        await page.locator("#upload-transcript").fill("Hello world, this is a voice sample for testing.")
        await page.get_by_role("button", name="Upload sample").click()
        hello = tab.sample("Hello")
        await playwright.expect(hello).to_be_visible(timeout=SLOW)

        # Make Fox the default.
        await fox.get_by_role("button", name="Make Fox the default").click()
        await playwright.expect(fox.locator(".badge")).to_have_text("Default")
        await playwright.expect(hello.locator(".badge")).to_have_count(0)

        # Edit Fox's transcript.
        await fox.get_by_role("button", name="Edit Fox").click()
        await fox.locator("textarea").fill("The quick brown fox jumps over the lazy dog.")
        await fox.get_by_role("button", name="Save changes to Fox").click()
        await playwright.expect(page.locator("#notice")).to_contain_text("Saved Fox")
        stored = await samples_of(http, user)
        assert stored["Fox"]["is_default"] and not stored["Hello"]["is_default"]
        assert stored["Fox"]["transcript"] == "The quick brown fox jumps over the lazy dog."
        assert stored["Fox"]["transcript_source"] == "user"

        # Delete Hello, after saying yes to the confirmation.
        page.once("dialog", lambda dialog: dialog.accept())
        await hello.get_by_role("button", name="Delete Hello").click()
        await playwright.expect(hello).to_have_count(0)
        assert set(await samples_of(http, user)) == {"Fox"}

        # Readable on a phone: nothing wider than the screen, every control labelled.
        await page.set_viewport_size({"width": 375, "height": 800})
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        unlabelled = await page.evaluate(
            """[...document.querySelectorAll('#app input, #app select, #app textarea, #app button')]
                .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
                .map(el => el.outerHTML)"""
        )
        assert unlabelled == []
    tab.assert_clean()


async def test_library_cards_are_compact_until_edit_opens_one(tab, user, http):
    """Five samples: each card shows the sample (name, transcript, duration, badge, waveform,
    player, actions) without its edit form; Edit opens that card's form alone, Cancel (or
    Escape) closes it and throws the change away, Save closes it with the change saved."""
    names = ["Ada", "Brook", "Cyrus", "Dana", "Eli"]
    added = await add_samples(http, user, names, default="Ada")
    page = tab.page
    async with screenshots_on_failure(tab, "compact"):
        await tab.sign_in(user.key)
        await playwright.expect(page.locator("li.sample")).to_have_count(5)
        for name in names:
            card = tab.sample(name)
            await playwright.expect(card.locator("canvas.waveform")).to_have_attribute("data-drawn", "true")
            await playwright.expect(card.locator(".transcript")).to_have_text(HELLO_TRANSCRIPT)
            await playwright.expect(card.locator(".meta")).to_contain_text(re.compile(r"^\d+\.\d s"))
            await playwright.expect(card.locator("audio")).to_be_visible()
            await playwright.expect(card.locator("form")).to_be_hidden()
            await playwright.expect(card.get_by_role("button", name=f"Delete {name}")).to_be_visible()
        ada = tab.sample("Ada")
        await playwright.expect(ada.locator(".badge")).to_have_text("Default")
        await playwright.expect(tab.sample("Brook").get_by_role("button", name="Make Brook the default")).to_be_visible()
        heights = await page.evaluate("[...document.querySelectorAll('li.sample')].map(li => li.getBoundingClientRect().height)")
        assert max(heights) <= 320, heights  # the edit forms made each about 550 px

        # By keyboard: Edit opens Ada's form (and no other), with the focus in its first field.
        edit = ada.get_by_role("button", name="Edit Ada")
        assert await edit.get_attribute("aria-expanded") == "false"
        await edit.focus()
        await page.keyboard.press("Enter")
        await playwright.expect(ada.locator("form")).to_be_visible()
        assert await edit.get_attribute("aria-expanded") == "true"
        assert await page.evaluate("document.activeElement.id") == f"sample-{added['Ada']['id']}-speaker"
        await playwright.expect(tab.sample("Brook").locator("form")).to_be_hidden()
        assert (await ada.bounding_box())["height"] > max(heights) + 100

        # Cancel closes it, the change thrown away, the focus back on Edit.
        await ada.get_by_label("Transcript").fill("Thrown away.")
        await ada.get_by_role("button", name="Cancel").focus()
        await page.keyboard.press("Enter")
        await playwright.expect(ada.locator("form")).to_be_hidden()
        assert await page.evaluate("document.activeElement.getAttribute('aria-label')") == "Edit Ada"
        await playwright.expect(ada.locator(".transcript")).to_have_text(HELLO_TRANSCRIPT)
        await page.keyboard.press("Enter")
        assert await ada.get_by_label("Transcript").input_value() == HELLO_TRANSCRIPT
        await page.keyboard.press("Escape")  # so does Escape
        await playwright.expect(ada.locator("form")).to_be_hidden()
        assert await page.evaluate("document.activeElement.getAttribute('aria-label')") == "Edit Ada"

        # Save closes it, with the changes saved and shown.
        await edit.click()
        await ada.get_by_label("Speaker name").fill("Ada Lovelace")
        await ada.get_by_label("Transcript").fill("Hello world, a sample renamed.")
        await ada.get_by_role("button", name="Save changes to Ada").click()
        await playwright.expect(page.locator("#notice")).to_contain_text("Saved Ada Lovelace")
        renamed = tab.sample("Ada Lovelace")
        await playwright.expect(renamed.locator(".transcript")).to_have_text("Hello world, a sample renamed.")
        await playwright.expect(renamed.locator("form")).to_be_hidden()
        stored = (await samples_of(http, user))["Ada Lovelace"]
        assert stored["transcript"] == "Hello world, a sample renamed." and stored["is_default"]

        # On a phone too, the cards stay compact and nothing is wider than the screen.
        await page.set_viewport_size({"width": 375, "height": 800})
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        phone = await page.evaluate("[...document.querySelectorAll('li.sample')].map(li => li.getBoundingClientRect().height)")
        assert max(phone) <= 420, phone
    tab.assert_clean()


async def test_the_library_lists_every_page_of_samples(tab, user, http):
    """listAll follows next_page_token to the end: 12 samples read one a page are 12 pages,
    more than the 10 it used to stop at without a word."""
    names = [f"Sample {number:02d}" for number in range(12)]
    await add_samples(http, user, names)
    page = tab.page
    async with screenshots_on_failure(tab, "pages"):
        await tab.sign_in(user.key)
        await playwright.expect(page.locator("li.sample")).to_have_count(12)
        listed = await page.evaluate(
            """async () => {
                const api = await import('/dashboard/api.js');
                const samples = await api.listAll('/v1/voice/samples', 'voice_samples', {page_size: 1});
                return samples.map(sample => sample.speaker_name);
            }"""
        )
        assert sorted(listed) == names, listed
    tab.assert_clean()


async def test_long_words_in_errors_and_notices_wrap_inside_their_boxes(tab, user, http):
    """A URL for a speaker name, a script with an absurd speaker tag, a parameter named at its
    narrow field: at phone and desktop widths the text wraps inside its box."""
    name = "https://voices.example.com/imported/narrators/featherstonehaugh-cholmondeley-0042"
    await add_samples(http, user, [name, "Other"], default="Other")
    page = tab.page
    async with screenshots_on_failure(tab, "overflow"):
        await tab.sign_in(user.key)
        await page.set_viewport_size({"width": 375, "height": 800})
        await tab.sample(name).get_by_role("button", name=f"Make {name} the default").click()
        await playwright.expect(page.locator("#notice")).to_contain_text("is now the default sample")
        for width in (375, 1280):
            await page.set_viewport_size({"width": width, "height": 800})
            assert await page.evaluate(OVERFLOWING) == [], width
            assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), width

        await tab.open("playground")
        for width in (375, 1280):
            await page.set_viewport_size({"width": width, "height": 800})
            await page.locator("#gen-input").fill(f"[S1] Hello. [S{'9' * 60}] Hi.")
            await page.get_by_role("button", name="Generate").click()
            await playwright.expect(page.locator("#gen-input-error")).to_contain_text("is not supported")
            assert await page.evaluate(OVERFLOWING) == [], width
            await page.locator("#gen-input").fill("[S1] Hello.")
            await page.get_by_label("Voice prompt length, s").fill("1000")
            await page.get_by_role("button", name="Generate").click()
            await playwright.expect(page.locator("#gen-max_audio_prompt_seconds-error")).to_contain_text("max_audio_prompt_seconds")
            assert await page.evaluate(OVERFLOWING) == [], width
            assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), width
            await page.get_by_role("button", name="Reset to defaults").click()
    tab.assert_clean(allowed=("400",))  # the refused requests are logged by the browser


# The width a select needs to show its chosen option whole (a copy of it, as wide as its
# content), and the width it has.
SELECT_WIDTHS = """select => {
    const probe = select.cloneNode(false);
    probe.removeAttribute('id');
    probe.append(select.selectedOptions[0].cloneNode(true));
    probe.style.width = 'max-content';
    probe.style.minWidth = '0';
    probe.style.maxWidth = 'none';
    select.after(probe);
    const needed = probe.getBoundingClientRect().width;
    probe.remove();
    return [needed, select.getBoundingClientRect().width];
}"""


async def test_the_voice_pickers_show_a_long_speaker_name_whole(tab, user, http):
    """A long speaker name, chosen for [S1] and [S2]: on a desktop each select is wide enough
    for its choice; on a phone too the name is shown whole under it."""
    name = "Maximiliana Featherstonehaugh-Cholmondeley"
    added = await add_samples(http, user, [name, "Bo"], default=name)
    page = tab.page
    async with screenshots_on_failure(tab, "voices"):
        await tab.sign_in(user.key)
        await tab.open("playground")
        await page.locator("#gen-s2").select_option(str(added[name]["id"]))
        for width in (1280, 375):
            await page.set_viewport_size({"width": width, "height": 800})
            for speaker in ("s1", "s2"):
                select = page.locator(f"#gen-{speaker}")
                assert await select.input_value() == str(added[name]["id"])
                await playwright.expect(select.locator("option:checked")).to_contain_text(name)
                await playwright.expect(page.locator(f"#gen-{speaker}-about")).to_contain_text(name)
                await playwright.expect(page.locator(f"#gen-{speaker}-about")).to_contain_text(HELLO_TRANSCRIPT)
                if width >= 1000:
                    needed, has = await select.evaluate(SELECT_WIDTHS)
                    assert needed <= has + 0.5, (speaker, needed, has)
            assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), width
            assert await page.evaluate(OVERFLOWING) == [], width
        await page.locator("#gen-s2").select_option("")
        await playwright.expect(page.locator("#gen-s2-about")).not_to_contain_text(name)
    tab.assert_clean()


# --- playground and history ---------------------------------------------------------------


async def test_the_playground_generates_with_the_default_voice_and_the_history_shares_it(tab, user, http, browser, mesh):
    page = tab.page
    await wait_for_models(http, user)
    fox = await created(await upload_form(
        http, user, (FIXTURES / "speech_fox.webm").read_bytes(), "Fox",
        transcript="The quick brown fox jumps over the lazy dog.", is_default="true",
    ))
    await created(await upload_form(http, user, (FIXTURES / "speech_hello.webm").read_bytes(), "Other", transcript="Hello world."))
    async with screenshots_on_failure(tab, "playground"):
        await tab.sign_in(user.key)
        await tab.open("playground")
        assert await page.locator("#gen-s1").input_value() == str(fox["id"])  # the default, pre-selected
        assert await page.locator("#gen-s2").input_value() == ""
        # The documented bounds and defaults come from the API.
        temperature = page.get_by_label("Temperature")
        assert (await temperature.get_attribute("min"), await temperature.get_attribute("max")) == ("0.1", "2")
        assert await temperature.input_value() == "1.8"

        # The API's validation messages appear at their field.
        await page.locator("#gen-input").fill("[S2] I cannot open.")
        await page.get_by_role("button", name="Generate").click()
        await playwright.expect(page.locator("#gen-input-error")).to_contain_text("invalid_script")
        await page.locator("#gen-input").fill("[S1] Hello from the playground.")
        await temperature.fill("5")
        await page.get_by_role("button", name="Generate").click()
        await playwright.expect(page.locator("#gen-temperature-error")).to_contain_text("temperature")
        await playwright.expect(page.locator("#gen-input-error")).to_be_empty()

        await page.get_by_role("button", name="Reset to defaults").click()
        await page.get_by_label("Max new tokens").fill("256")  # the tiny model makes these in seconds
        await page.locator("#gen-collection").fill("browser")
        await page.evaluate(
            """() => { const line = document.querySelector('#gen-progress'); window.progressSeen = [];
                new MutationObserver(() => window.progressSeen.push(line.textContent))
                  .observe(line, {childList: true, characterData: true, subtree: true}); }"""
        )
        await page.get_by_role("button", name="Generate").click()
        await playwright.expect(page.locator("#gen-progress")).to_contain_text(re.compile(r"succeeded · \d+\.\d s"), timeout=SLOW)
        # Meanwhile the line said where the request was (from the history) and how long it had taken.
        seen = await page.evaluate("window.progressSeen")
        assert any(re.fullmatch(r"(queued|running) · \d+\.\d s", line) for line in seen), seen
        await until(page, "(a => a.readyState >= 1 && a.duration > 0)(document.querySelector('#gen-audio'))")
        generation_id = await page.locator("[data-fact=generation]").text_content()
        seed = await page.locator("[data-fact=seed]").text_content()
        assert generation_id.startswith("gen_") and int(seed) >= 0

        # Listed in the history with its parameters; made unlisted, its link plays without a key.
        await tab.open("history")
        row = page.locator(f'li[data-generation-id="{generation_id}"]')
        await playwright.expect(row.locator(".badge")).to_have_text("succeeded")
        await playwright.expect(row.locator("[data-fact=parameters]")).to_contain_text("max_new_tokens 256")
        await playwright.expect(row.locator("[data-fact=parameters]")).to_contain_text(f"seed {seed}")
        await playwright.expect(row.locator("[data-fact=voices]")).to_have_text("S1: Fox")
        await page.locator("#filter-status").select_option("failed")
        await playwright.expect(row).to_have_count(0)
        await page.locator("#filter-status").select_option("")
        await row.get_by_label("Visibility").select_option("unlisted")
        share = row.locator("input.share-url")
        await playwright.expect(share).to_have_value(re.compile(r"/v1/shared/generations/"))
        await playwright.expect(row.get_by_role("button", name="Copy link")).to_be_visible()
        share_url = await share.input_value()

        # A fresh browser, without the key, plays it.
        stranger = await browser.new_context()
        try:
            other = await stranger.new_page()
            await other.goto(share_url)
            played = await until(
                other, "(m => m && m.readyState >= 1 && m.duration > 0 && m.duration)(document.querySelector('video, audio'))"
            )
            assert played > 0
        finally:
            await stranger.close()
    tab.assert_clean(allowed=("400",))  # the refused scripts' requests are logged by the browser


async def test_the_playground_plays_the_generation_while_it_is_made(tab, user, http):
    """Streamed: the first audio is scheduled (Web Audio) while the history still says running;
    the finished file is the whole stream (even after the listener stopped the playback), with
    its real length, seed and download link."""
    page = tab.page
    await wait_for_models(http, user)
    async with screenshots_on_failure(tab, "streamed"):
        await tab.sign_in(user.key)
        await tab.open("playground")
        await page.locator("#gen-input").fill("[S1] Streamed from the playground, heard as it is made.")
        await page.get_by_label("Max new tokens").fill("1500")  # a few seconds on the tiny model
        await page.get_by_role("button", name="Generate").click()
        await until(page, "document.querySelector('#gen-playback').dataset.playback === 'playing'", timeout=SLOW / 1000)
        listed = await created(await http.get("/v1/voice/generations", params={"page_size": 1}, headers=user.headers))
        generation = listed["generations"][0]
        assert generation["status"] == "running", generation  # heard before it was finished
        await playwright.expect(page.locator("#gen-playback")).to_have_text("Playing while generating…")
        assert await page.locator("#gen-audio").get_attribute("src") is None  # what plays is the stream
        # Stopped by keyboard, the playback stops; the generation goes on and its file is whole.
        await page.get_by_role("button", name="Stop playback").focus()
        await page.keyboard.press("Enter")
        await playwright.expect(page.locator("#gen-playback")).to_have_text("Streamed playback stopped; the generation goes on.")
        await playwright.expect(page.get_by_role("button", name="Stop playback")).to_be_hidden()

        await playwright.expect(page.locator("#gen-progress")).to_contain_text(re.compile(r"succeeded · \d+\.\d s"), timeout=SLOW)
        await playwright.expect(page.locator("#gen-playback")).to_have_text("Streamed playback stopped.")
        duration = await until(page, "(a => a.readyState >= 1 && a.duration > 0 && a.duration)(document.querySelector('#gen-audio'))")
        finished = await created(await http.get(f"/v1/voice/generations/{generation['id']}", headers=user.headers))
        assert finished["status"] == "succeeded"
        assert abs(duration - finished["audio_duration_seconds"]) < 0.05, (duration, finished["audio_duration_seconds"])
        assert await page.locator("[data-fact=generation]").text_content() == generation["id"]
        assert int(await page.locator("[data-fact=seed]").text_content()) == finished["parameters"]["seed"] >= 0
        download = page.locator("#gen-download")
        assert await download.get_attribute("download") == f"{generation['id']}.wav"
        assert (await download.get_attribute("href")).startswith("blob:")
    tab.assert_clean()


async def test_a_stream_that_breaks_off_after_its_audio_began_says_so(browser, mesh, user):
    """A gateway that gives a generation 2 s: the audio has begun (status 200) when time runs out,
    so the connection closes mid-stream; the playground says so, with the history's error."""
    async with extra_gateway(mesh, GATEWAY_SYNTH_TIMEOUT_SECONDS="2") as gateway, aiohttp.ClientSession(base_url=gateway.http_url) as http:
        await wait_for_models(http, user)
        context = await browser.new_context()
        tab = Tab(await context.new_page(), gateway.http_url)
        try:
            async with screenshots_on_failure(tab, "broken-stream"):
                await tab.sign_in(user.key)
                await tab.open("playground")
                await tab.page.get_by_label("Max new tokens").fill("3000")  # far more than 2 s make
                await tab.page.get_by_role("button", name="Generate").click()
                error = tab.page.locator("#gen-error")
                await playwright.expect(error).to_contain_text("The generation stopped after", timeout=SLOW)
                await playwright.expect(error).to_contain_text("did not finish")
                text = await error.text_content()
                heard = re.search(r"after (\d+\.\d) s of audio", text)
                assert heard and float(heard.group(1)) > 0, text
                await playwright.expect(tab.page.locator("#gen-progress")).to_contain_text("failed")
                await playwright.expect(tab.page.locator("#gen-result")).to_be_hidden()
                await playwright.expect(tab.page.get_by_role("button", name="Generate")).to_be_enabled()
                listed = await created(await http.get("/v1/voice/generations", params={"page_size": 1}, headers=user.headers))
                failed = listed["generations"][0]
                assert failed["status"] == "failed", failed
                assert f"({failed['error_type']})" in text and failed["error_message"][1:] in text, (failed, text)
                await playwright.expect(tab.page.locator("#gen-id")).to_have_text(failed["id"])  # the one it followed
                await playwright.expect(tab.page.locator("#gen-following")).to_be_visible()
            tab.assert_clean(allowed=("ERR_", "network"))  # the cut-off body is logged by the browser
        finally:
            await context.close()


async def test_the_history_shows_a_failed_generation_with_its_error_and_filters_by_status(tab, user, http):
    failed = await http.post(
        "/v1/voice/generations",
        json={"input": "[S1] Nobody serves this.", "model": "no-such-model", "collection": "misc"},
        headers=user.headers,
    )
    assert failed.status == 404
    generation_id = failed.headers["X-Generation-Id"]
    page = tab.page
    async with screenshots_on_failure(tab, "history"):
        await tab.sign_in(user.key)
        await tab.open("history")
        row = page.locator(f'li[data-generation-id="{generation_id}"]')
        await playwright.expect(row.locator(".badge")).to_have_text("failed")
        await playwright.expect(row.locator("[data-fact=error]")).to_contain_text("no_provider")
        await playwright.expect(row.get_by_role("button", name=re.compile("^Play"))).to_have_count(0)
        await page.locator("#filter-status").select_option("succeeded")
        await playwright.expect(row).to_have_count(0)
        await playwright.expect(page.locator("#history-empty")).to_be_visible()
        await page.locator("#filter-status").select_option("failed")
        await page.locator("#filter-collection").fill("misc")
        await page.get_by_role("button", name="Filter").click()
        await playwright.expect(row).to_be_visible()
        await page.locator("#filter-collection").fill("elsewhere")
        await page.locator("#filter-collection").press("Enter")  # the keyboard works as well as the button
        await playwright.expect(row).to_have_count(0)

        # A generation started elsewhere shows up and finishes on the open page, without a reload.
        await page.locator("#filter-collection").fill("")
        await page.locator("#filter-status").select_option("")
        await page.evaluate("window.notReloaded = true")
        await wait_for_models(http, user)
        started = asyncio.create_task(http.post(
            "/v1/voice/generations", json={"input": "[S1] Live.", "max_new_tokens": 256}, headers=user.headers
        ))
        response = await started
        assert response.status == 200, await response.text()
        live = page.locator(f'li[data-generation-id="{response.headers["X-Generation-Id"]}"]')
        await playwright.expect(live.locator(".badge")).to_have_text("succeeded", timeout=20_000)
        await playwright.expect(live.get_by_role("button", name=re.compile("^Play"))).to_be_visible()
        assert await page.evaluate("window.notReloaded")
    tab.assert_clean()


async def test_a_refused_generation_says_why_and_when_to_try_again(browser, mesh, user):
    """A gateway whose accounts may start one generation every 100 s: the second is refused (429)."""
    limits = {"GATEWAY_ACCOUNT_GENERATIONS_PER_SECOND": "0.01", "GATEWAY_ACCOUNT_GENERATION_BURST": "1"}
    async with extra_gateway(mesh, **limits) as gateway, aiohttp.ClientSession(base_url=gateway.http_url) as http:
        # The account's one allowed start, spent at once on a request for a model nobody serves.
        spent = await http.post(
            "/v1/voice/generations", json={"input": "[S1] First.", "model": "no-such-model"}, headers=user.headers
        )
        assert spent.status == 404
        context = await browser.new_context()
        tab = Tab(await context.new_page(), gateway.http_url)
        try:
            async with screenshots_on_failure(tab, "refused"):
                await tab.sign_in(user.key)
                await tab.open("playground")
                await tab.page.get_by_role("button", name="Generate").click()
                error = tab.page.locator("#gen-error")
                await playwright.expect(error).to_contain_text("over its generation limit", timeout=SLOW)
                await playwright.expect(error).to_contain_text(re.compile(r"Try again in \d+ s"))
                await playwright.expect(error).to_contain_text("rate_limited")
                await playwright.expect(tab.page.locator("#gen-following")).to_be_hidden()  # refused: not admitted
                await playwright.expect(tab.page.locator("#gen-progress")).to_contain_text("failed")
                await playwright.expect(tab.page.get_by_role("button", name="Generate")).to_be_enabled()
            tab.assert_clean(allowed=("429",))
        finally:
            await context.close()


async def test_the_history_plays_a_generation_from_its_audio_url_and_seeks(tab, user, http):
    """The history's player streams the generation's signed audio_url, without the key, and seeks
    in it: the browser asks for byte ranges (206) and plays on from where it was sent."""
    await wait_for_models(http, user)
    response = await http.post(
        "/v1/voice/generations", json={"input": "[S1] Seek in me.", "max_new_tokens": 1000}, headers=user.headers
    )
    assert response.status == 200, await response.text()
    generation_id = response.headers["X-Generation-Id"]
    page = tab.page
    fetched = []  # (status, whether it carried a key) of each request for the audio
    page.on(
        "response",
        lambda answer: "/v1/signed/generations/" in answer.url
        and fetched.append((answer.status, "authorization" in answer.request.headers)),
    )
    player = f'document.querySelector(\'li[data-generation-id="{generation_id}"] audio\')'
    async with screenshots_on_failure(tab, "seek"):
        await tab.sign_in(user.key)
        await tab.open("history")
        row = page.locator(f'li[data-generation-id="{generation_id}"]')
        await row.get_by_role("button", name=f"Play {generation_id}").click()
        src = await row.locator("audio").get_attribute("src")
        assert src.startswith(f"/v1/signed/generations/{generation_id}/audio?expires="), src
        duration = await until(page, f"(a => a && a.readyState >= 1 && a.duration)({player})", timeout=SLOW / 1000)
        assert duration > 6
        target = duration - 3
        await page.evaluate(f"(a => {{ a.currentTime = {target}; return a.play(); }})({player})")
        # It plays on from there, not from the start.
        await until(page, f"(a => !a.paused && !a.seeking && a.currentTime > {target + 0.5})({player})", timeout=20)
        played = await page.evaluate(f"(a => [...Array(a.played.length).keys()].map(i => [a.played.start(i), a.played.end(i)]))({player})")
        assert any(start >= target - 0.1 for start, _ in played), played
    assert fetched and all(status == 206 for status, _ in fetched), fetched
    assert not any(keyed for _, keyed in fetched)  # the URL is the credential
    tab.assert_clean()


async def test_the_history_names_the_voices_a_generation_cloned(tab, user, http, mesh):
    """The history names a generation's voices as the samples were named when it was admitted (a
    sample renamed since keeps its old name there). One admitted before the history kept names
    shows the sample's id, and says so when that sample has been deleted from the library since."""
    await wait_for_models(http, user)
    added = await add_samples(http, user, ["Ada", "Bob"])
    ada, bob = added["Ada"]["id"], added["Bob"]["id"]

    async def generate(script: str) -> str:
        response = await http.post(
            "/v1/voice/generations",
            json={"input": script, "speakers": {"S1": ada, "S2": bob}, "max_new_tokens": 256},
            headers=user.headers,
        )
        assert response.status == 200, await response.text()
        return response.headers["X-Generation-Id"]

    named = await generate("[S1] Named voices. [S2] Both of them.")
    older = await generate("[S1] From before names were kept. [S2] Indeed.")
    # `older` as a generation admitted before the history kept speaker names: none stored.
    connection = await asyncpg.connect(mesh.env["DATABASE_URL"])
    try:
        await connection.execute("UPDATE gateway.generations SET speaker_names = '{}' WHERE id = $1", older)
    finally:
        await connection.close()
    await created(await http.patch(f"/v1/voice/samples/{ada}", json={"speaker_name": "Ada Lovelace"}, headers=user.headers))
    deleted = await http.delete(f"/v1/voice/samples/{bob}", headers=user.headers)
    assert deleted.status in (200, 204), await deleted.text()
    page = tab.page
    async with screenshots_on_failure(tab, "voice-names"):
        await tab.sign_in(user.key)
        await tab.open("history")
        voices = page.locator(f'li[data-generation-id="{named}"] [data-fact=voices]')
        await playwright.expect(voices).to_have_text("S1: Ada, S2: Bob")
        voices = page.locator(f'li[data-generation-id="{older}"] [data-fact=voices]')
        await playwright.expect(voices).to_have_text(f"S1: sample {ada}, S2: sample {bob} (deleted from your library)")
    tab.assert_clean()


# Each change of the playground's progress, follow and playback lines, as the page showed it:
# when (performance.now()), the generation it named (if any), the progress line, the playback state.
RECORD_PROGRESS = """() => {
    window.progressSeen = [];
    const following = document.querySelector('#gen-following');
    const note = () => window.progressSeen.push({
        at: performance.now(),
        id: !following || following.hidden ? '' : document.querySelector('#gen-id').textContent,
        progress: document.querySelector('#gen-progress').textContent,
        playback: document.querySelector('#gen-playback').dataset.playback || '',
    });
    for (const line of ['#gen-following', '#gen-progress', '#gen-playback'].map(selector => document.querySelector(selector))) {
        if (line) new MutationObserver(note).observe(line, {attributes: true, childList: true, characterData: true, subtree: true});
    }
}"""

# When the first byte of the answer to the playground's POST of a generation came (performance.now() time).
ANSWERED = """id => performance.getEntriesByType('resource')
    .filter(entry => entry.name.endsWith(`/v1/voice/generations?generation_id=${id}`))
    .map(entry => entry.responseStart)"""


@contextlib.asynccontextmanager
async def provider_kept_busy(http, account: Account, frames: int = 1500):
    """The tiny Dia's batch filled (SYNTH_MAX_BATCH_SIZE, 4 rows) with `account`'s streamed
    generations, each heard (so generating) before this yields: a request made meanwhile is admitted
    and sent to the provider, and waits there for a row, without audio, until one of them ends."""
    heard = [asyncio.Event() for _ in range(4)]

    async def occupy(started: asyncio.Event) -> None:
        response = await http.post(
            "/v1/voice/generations",
            json={"input": "[S1] Keeping the provider busy.", "max_new_tokens": frames, "stream": True},
            headers=account.headers,
        )
        assert response.status == 200, await response.text()
        await response.content.readany()
        started.set()
        await response.read()

    tasks = [asyncio.create_task(occupy(started)) for started in heard]
    try:
        await asyncio.wait_for(asyncio.gather(*(started.wait() for started in heard)), SLOW / 1000)
        yield
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def test_the_playground_follows_its_own_generation_from_the_moment_it_is_admitted(tab, user, http, key_env):
    """The page chooses its generation's id and sends it with the request: it names that
    generation and says where it is (from the history) as soon as it is admitted, before the
    answer with the first audio comes (here while the provider is busy with others); a request
    refused at the door names none, and a generation of the same script made elsewhere
    meanwhile is never taken for it."""
    page = tab.page
    other = Account(f"busy-{uuid.uuid4().hex[:8]}", "")
    other.key = make_key(other.name, key_env)
    await wait_for_models(http, user)
    async with screenshots_on_failure(tab, "following"):
        await tab.sign_in(user.key)
        await tab.open("playground")
        await page.locator("#gen-input").fill("[S2] I cannot open.")
        await page.get_by_role("button", name="Generate").click()
        await playwright.expect(page.locator("#gen-input-error")).to_contain_text("invalid_script")
        await playwright.expect(page.locator("#gen-following")).to_be_hidden()

        script = "[S1] Followed from the moment it was admitted."
        await page.locator("#gen-input").fill(script)
        await page.get_by_label("Max new tokens").fill("1000")
        await page.evaluate(RECORD_PROGRESS)
        async with provider_kept_busy(http, other):
            await page.get_by_role("button", name="Generate").click()
            # The same script, elsewhere, a moment later: it fails at once.
            decoy = await http.post("/v1/voice/generations", json={"input": script, "model": "no-such-model"}, headers=user.headers)
            assert decoy.status == 404, await decoy.text()
            # Admitted, named and running, while no audio has come.
            await playwright.expect(page.locator("#gen-following")).to_be_visible(timeout=SLOW)
            generation_id = await page.locator("#gen-id").text_content()
            assert re.fullmatch(r"gen_[0-9a-f]{32}", generation_id), generation_id
            await playwright.expect(page.locator("#gen-progress")).to_contain_text(re.compile(r"^running · "))
            assert await page.evaluate("document.querySelector('#gen-playback').dataset.playback") is None
            stored = await created(await http.get(f"/v1/voice/generations/{generation_id}", headers=user.headers))
            assert stored["input"] == script and stored["status"] == "running", stored
        await playwright.expect(page.locator("#gen-progress")).to_contain_text(re.compile(r"succeeded · \d+\.\d s"), timeout=SLOW)
        assert await page.locator("[data-fact=generation]").text_content() == generation_id
        await playwright.expect(page.locator("#gen-id")).to_have_text(generation_id)
        await playwright.expect(page.locator("#gen-tokens")).to_have_text("max_new_tokens 1000")  # no voice prompt: it all fits
        link = page.locator("#gen-following").get_by_role("link", name="Queue and history")
        await playwright.expect(link).to_have_attribute("href", "#history")

        seen = await page.evaluate("window.progressSeen")
        [answered] = await page.evaluate(ANSWERED, generation_id)
        named = [moment for moment in seen if moment["id"]]
        assert named and {moment["id"] for moment in named} == {generation_id}, seen
        # Named, with its status from the history, well before the answer (and its audio) came.
        assert named[0]["at"] < answered - 1000 and named[0]["playback"] == "", (named[0], answered)
        assert not any(moment["progress"].startswith("failed") for moment in seen), seen  # the decoy's status
        stored = await created(await http.get(f"/v1/voice/generations/{generation_id}", headers=user.headers))
        assert stored["status"] == "succeeded" and stored["id"] != decoy.headers["X-Generation-Id"]
    tab.assert_clean(allowed=("400",))  # the refused script's request is logged by the browser


async def test_the_playground_with_the_default_sample_and_every_field_untouched_generates_audio(tab, user, http):
    """Issue 20's acceptance, in its words: in Chromium, the Playground with the default sample and
    every field untouched generates audio. max_new_tokens stays at the 3072 the page shows; what
    does not fit beside the sample's voice prompt is lowered, and the playground and the history
    say what it ran with."""
    page = tab.page
    await wait_for_models(http, user)
    ada = (await add_samples(http, user, ["Ada"], default="Ada"))["Ada"]
    spec = (await (await http.get("/openapi.json")).json())["components"]["schemas"]["voice.gateway.v1.GenerationSpec"]
    async with screenshots_on_failure(tab, "untouched"):
        await tab.sign_in(user.key)
        await tab.open("playground")
        # Untouched: the default sample for [S1], the script, every parameter at the default shown.
        assert await page.locator("#gen-s1").input_value() == str(ada["id"])
        parameters = await page.evaluate("[...document.querySelectorAll('#gen-parameters input')].map(i => [i.name, i.value])")
        assert len(parameters) == 8
        for name, value in parameters:
            assert float(value) == float(spec["properties"][name]["default"]), (name, value)
            await playwright.expect(page.locator(f"#gen-{name}-hint")).to_contain_text(f"default {value}")
        await playwright.expect(page.get_by_label("Max new tokens")).to_have_value("3072")
        script = await page.locator("#gen-input").input_value()

        await page.get_by_role("button", name="Generate").click()
        await until(page, "document.querySelector('#gen-playback').dataset.playback === 'playing'", timeout=SLOW / 1000)
        await playwright.expect(page.locator("#gen-progress")).to_contain_text(re.compile(r"succeeded · \d+\.\d s"), timeout=SLOW)
        await playwright.expect(page.locator("#gen-error")).to_be_empty()
        duration = await until(page, "(a => a.readyState >= 1 && a.duration > 0 && a.duration)(document.querySelector('#gen-audio'))")
        generation_id = await page.locator("[data-fact=generation]").text_content()
        stored = await created(await http.get(f"/v1/voice/generations/{generation_id}", headers=user.headers))
        assert stored["status"] == "succeeded" and stored["input"] == script
        assert stored["speaker_names"] == {"S1": "Ada"}
        assert abs(duration - stored["audio_duration_seconds"]) < 0.05, (duration, stored["audio_duration_seconds"])
        used = stored["parameters"]["max_new_tokens"]
        assert 256 <= used < 3072, used  # lowered beside the sample's voice prompt
        fitted = f"{used} (of 3072: what fit beside the voice prompt)"
        await playwright.expect(page.locator('[data-fact="max new tokens"]')).to_have_text(fitted)
        await playwright.expect(page.locator("#gen-tokens")).to_have_text(f"max_new_tokens {fitted}")
        for width in (375, 1280):
            await page.set_viewport_size({"width": width, "height": 800})
            assert await page.evaluate(OVERFLOWING) == [], width
            assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), width

        # The history, by keyboard from the Generate button: succeeded, in Ada's voice, with the
        # max_new_tokens it ran with.
        await page.get_by_role("button", name="Generate").focus()
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.closest('#gen-following') !== null")
        await page.keyboard.press("Enter")
        await tab.opened("history")
        row = page.locator(f'li[data-generation-id="{generation_id}"]')
        await playwright.expect(row.locator(".badge")).to_have_text("succeeded")
        await playwright.expect(row.locator("[data-fact=voices]")).to_have_text("S1: Ada")
        await playwright.expect(row.locator("[data-fact=parameters]")).to_contain_text(f"max_new_tokens {used},")
    tab.assert_clean()


# --- API keys, usage and accounts --------------------------------------------------------


@pytest.fixture(scope="module")
def operator(key_env) -> Account:
    """An operator: a key with the admin scope alone (`make key ... SCOPES=admin`)."""
    name = f"ops-{uuid.uuid4().hex[:8]}"
    return Account(name, make_key(name, key_env, scopes="admin"))


async def test_the_keys_page_makes_a_key_shown_once_and_revokes_it(tab, user, http):
    page = tab.page
    async with screenshots_on_failure(tab, "keys"):
        await tab.sign_in(user.key)
        await page.get_by_role("link", name="API keys").click()
        await tab.opened("keys")
        mine = page.locator("li.key", has=page.locator(".badge", has_text="this key"))
        await playwright.expect(mine).to_have_count(1)
        await playwright.expect(mine.locator("h3")).to_have_text("make key")

        # A reader's key: its name, only library:read, never expiring.
        await page.locator("#key-name").fill("laptop")
        for box in await page.locator("#key-scopes input:enabled").all():
            await box.uncheck()
        await page.get_by_role("checkbox", name=re.compile("^library:read")).check()
        await playwright.expect(page.get_by_role("checkbox", name=re.compile("^admin"))).to_be_disabled()  # this key lacks it
        await page.get_by_role("button", name="Create key").click()
        secret_box = page.locator("#key-secret-value")
        await playwright.expect(secret_box).to_have_value(re.compile(r"^vm_[A-Za-z0-9_-]{40,}$"))
        secret = await secret_box.input_value()
        laptop = page.locator("li.key", has=page.get_by_role("heading", name="laptop"))
        await playwright.expect(laptop.locator("[data-fact=scopes]")).to_have_text("library:read")
        await playwright.expect(laptop.locator("code")).to_have_text(f"{secret[:11]}…")
        await playwright.expect(laptop.locator('[data-fact="last used"]')).to_have_text("never")
        reader = {"Authorization": f"Bearer {secret}"}
        assert (await http.get("/v1/voice/samples", headers=reader)).status == 200
        refused = await http.post("/v1/voice/generations", json={"input": "[S1] Hi."}, headers=reader)
        assert refused.status == 403 and (await refused.json())["error"]["type"] == "insufficient_scope"

        # Shown once: gone from the page after Done, never in the list.
        await page.get_by_role("button", name="Done").click()
        await playwright.expect(page.locator("#key-secret")).to_be_hidden()
        assert secret not in await page.content() and secret[11:] not in await page.content()

        # Revoked after a confirmation: it stops at once.
        page.once("dialog", lambda dialog: dialog.accept())
        await laptop.get_by_role("button", name=f"Revoke {secret[:11]}").click()
        await playwright.expect(laptop).to_have_count(0)
        assert (await http.get("/v1/voice/samples", headers=reader)).status == 401
    tab.assert_clean()


async def test_the_usage_page_draws_each_days_audio_and_says_what_is_left_of_the_quota(tab, http, operator):
    account = await created(await http.post("/v1/accounts", json={"name": f"dash-{uuid.uuid4().hex[:8]}", "monthly_audio_seconds": 600},
                                            headers=operator.headers))
    key = (await created(await http.post(f"/v1/accounts/{account['id']}/keys", json={"name": "main"}, headers=operator.headers)))["secret"]
    user = Account(account["name"], key)
    await wait_for_models(http, user)
    for text in ("[S1] One for the chart.", "[S1] Two for the chart."):
        response = await http.post("/v1/voice/generations", json={"input": text, "max_new_tokens": 256}, headers=user.headers)
        assert response.status == 200, await response.text()
    usage = await created(await http.get("/v1/usage", params={"group_by": "day"}, headers=user.headers))
    audio = usage["total"]["audio_seconds"]
    today = usage["buckets"][0]["date"]
    page = tab.page
    async with screenshots_on_failure(tab, "usage"):
        await tab.sign_in(key)
        await page.get_by_role("link", name="Usage").click()
        await tab.opened("usage")
        bar = page.locator(f'#usage-chart rect.bar[data-day="{today}"]')
        await playwright.expect(bar).to_have_count(1)
        assert float(await bar.get_attribute("data-audio-seconds")) == pytest.approx(audio)
        assert float(await bar.get_attribute("height")) > 0
        await playwright.expect(page.locator('[data-total="generations"]')).to_have_text("2")
        shown = await page.locator('[data-total="audio"]').text_content()
        assert float(shown.removesuffix(" s")) == pytest.approx(audio, abs=0.051), shown
        quota = page.locator('li.quota[data-quota="audio_seconds"] label')
        await playwright.expect(quota).to_have_text(re.compile(r"^[\d,.]+ of 600 seconds of audio left$"))
        left = float((await quota.text_content()).split(" of ")[0].replace(",", ""))
        assert left == pytest.approx(600 - audio, abs=0.001)
        await playwright.expect(page.locator("#quota-reset")).to_contain_text("start afresh")
        await playwright.expect(page.locator("#usage-days tbody tr")).to_have_count(1)
        await playwright.expect(page.locator("#usage-keys tbody th")).to_have_text(re.compile(r"^main \(vm_"))

        # A range the API refuses says why, next to the form.
        await page.locator("#usage-start").fill("2020-01-01")
        await page.locator("#usage-end").fill("2025-01-01")
        await page.get_by_role("button", name="Show").click()
        await playwright.expect(page.locator("#usage-error")).to_contain_text("at most 366")
    tab.assert_clean(allowed=("400",))


async def test_an_operator_sees_the_accounts_page_alone_and_manages_accounts_there(tab, http, operator):
    page = tab.page
    name = f"team-{uuid.uuid4().hex[:8]}"
    async with screenshots_on_failure(tab, "accounts"):
        await page.goto(tab.base_url + "/")
        await page.get_by_label("API key").fill(operator.key)
        await page.get_by_role("button", name="Sign in").click()
        await tab.opened("accounts")  # the one page an admin-only key may use
        for hidden in ("Voice library", "Playground", "Queue & history", "Usage", "API keys"):
            await playwright.expect(page.get_by_role("link", name=hidden)).to_be_hidden()

        await page.locator("#account-name").fill(name)
        await page.locator("#account-generations").fill("50")
        await page.get_by_role("button", name="Create account").click()
        card = page.locator(f'li.account[data-name="{name}"]')
        await playwright.expect(card.locator("[data-fact=quotas]")).to_have_text("50 generations a month")
        account_id = int(await card.get_attribute("data-account-id"))

        await card.get_by_label("Monthly audio seconds").fill("120")
        await card.get_by_role("button", name="Save quotas").click()
        await playwright.expect(card.locator("[data-fact=quotas]")).to_have_text("120 audio seconds, 50 generations a month")

        await card.get_by_role("button", name="New key").click()
        await playwright.expect(page.locator("#account-secret-value")).to_have_value(re.compile("^vm_"))
        key = await page.locator("#account-secret-value").input_value()
        assert (await http.get("/v1/voice/samples", headers={"Authorization": f"Bearer {key}"})).status == 200
        await page.get_by_role("button", name="Done").click()

        await card.get_by_role("button", name="Disable").click()
        await playwright.expect(card.locator(".badge")).to_have_text("disabled")
        refused = await http.get("/v1/voice/samples", headers={"Authorization": f"Bearer {key}"})
        assert refused.status == 403 and (await refused.json())["error"]["type"] == "account_disabled"
        await card.get_by_role("button", name="Enable").click()
        await playwright.expect(card.locator(".badge")).to_have_count(0)

        page.once("dialog", lambda dialog: dialog.accept())
        await card.get_by_role("button", name="Delete").click()
        await playwright.expect(card).to_have_count(0)
        gone = await http.get(f"/v1/accounts/{account_id}", headers=operator.headers)
        assert gone.status == 404
        assert (await http.get("/v1/voice/samples", headers={"Authorization": f"Bearer {key}"})).status == 401
    tab.assert_clean()


async def test_a_page_signs_out_once_its_account_is_disabled(tab, http, operator):
    account = await created(await http.post("/v1/accounts", json={"name": f"dash-{uuid.uuid4().hex[:8]}"}, headers=operator.headers))
    key = (await created(await http.post(f"/v1/accounts/{account['id']}/keys", json={}, headers=operator.headers)))["secret"]
    page = tab.page
    async with screenshots_on_failure(tab, "disabled"):
        await tab.sign_in(key)
        await created(await http.patch(f"/v1/accounts/{account['id']}", json={"disabled": True}, headers=operator.headers))
        await page.goto(f"{tab.base_url}/#history")  # its next call is refused
        await playwright.expect(page.locator("#signin-error")).to_contain_text("disabled")
        await playwright.expect(page.locator("#app")).to_be_hidden()
    tab.assert_clean(allowed=("403",))


async def test_the_history_shows_captions_highlighting_the_word_being_said_and_the_scores(tab, user, http, mesh):
    """Under the player the script's words, the one being said highlighted as the audio plays; beside
    the generation what speech recognition heard and best_of's candidates. The tiny Dia makes noise,
    in which the recognizer hears few words if any: the analysis is set to known timings here (its
    making is tested on real speech in tests/stt/test_analysis.py)."""
    await wait_for_models(http, user)
    response = await http.post(
        "/v1/voice/generations",
        json={"input": "[S1] One two. [S2] Three four.", "max_new_tokens": 1000, "best_of": 2},
        headers=user.headers,
    )
    assert response.status == 200, await response.text()
    generation_id = response.headers["X-Generation-Id"]
    timed = [("One", "S1", 0.5, 1.5), ("two.", "S1", 1.5, 2.5), ("Three", "S2", 3.0, 4.0), ("four.", "S2", 4.0, 5.0)]
    words = [
        {"text": text, "speaker": speaker, "heard": text != "four.", "startSeconds": start, "endSeconds": end}
        for text, speaker, start, end in timed
    ]
    connection = await asyncpg.connect(mesh.env["DATABASE_URL"])
    try:
        await connection.execute(
            """UPDATE gateway.generations SET analysis = jsonb_set(jsonb_set(analysis, '{words}', $2::jsonb),
                   '{wordErrorRate}', '0.25') WHERE id = $1""",
            generation_id, json.dumps(words),
        )  # fmt: skip
    finally:
        await connection.close()
    page = tab.page
    row = page.locator(f'li[data-generation-id="{generation_id}"]')
    player = f'document.querySelector(\'li[data-generation-id="{generation_id}"] audio\')'
    async with screenshots_on_failure(tab, "captions"):
        await tab.sign_in(user.key)
        await tab.open("history")
        await playwright.expect(row.locator("[data-fact=heard]")).to_have_text("3 of 4 words, word error rate 25%")
        await playwright.expect(row.locator("[data-fact='best of']")).to_contain_text("(chosen)")
        captions = row.get_by_label(f"Captions of {generation_id}")
        await playwright.expect(captions).to_have_text("S1 One two. S2 Three four.")
        await playwright.expect(captions.locator(".unheard")).to_have_text("four.")
        await row.get_by_role("button", name=f"Play {generation_id}").click()
        await until(page, f"(a => a && a.readyState >= 1)({player})", timeout=SLOW / 1000)
        await page.evaluate(f"(a => {{ a.pause(); a.currentTime = 3.5; return a.play(); }})({player})")
        await until(page, f"(a => a.currentTime > 3.5 && a.currentTime < 3.9)({player})", timeout=20)
        await playwright.expect(captions.locator(".word.current")).to_have_text("Three")
        await page.evaluate(f"(a => {{ a.pause(); a.currentTime = 1.0; }})({player})")
        await playwright.expect(captions.locator("[aria-current=true]")).to_have_text("One")
    tab.assert_clean()


async def test_a_sample_with_two_voices_shows_its_upload_warning_on_its_card(tab, user, http):
    two_voices = (FIXTURES / "sample_two_voices.wav").read_bytes()
    one_voice = (FIXTURES / "sample_voice_one.wav").read_bytes()
    warned = await created(await upload_form(http, user, two_voices, "Two voices", transcript="typed"))
    fine = await created(await upload_form(http, user, one_voice, "One voice", transcript="typed"))
    page = tab.page
    async with screenshots_on_failure(tab, "sample-warnings"):
        await tab.sign_in(user.key)
        await tab.open("library")
        card = page.locator(f'li[data-sample-id="{warned["id"]}"]')
        await playwright.expect(card.get_by_label("Upload warnings")).to_contain_text("more than one voice")
        await playwright.expect(page.locator(f'li[data-sample-id="{fine["id"]}"] .warnings')).to_have_count(0)
    tab.assert_clean()
