#!/usr/bin/env python3
"""The gallery (GET / and GET /browse/{dir} of --http-listen) in a real browser.

A --media-root of clips made here with the ffmpeg CLI, with names that break
HTML and URLs when not escaped (spaces, quotes, <, &, %, #, ?, non-ASCII) and a
subfolder; the real server with its HTTP gateway; headless Chromium (Debian's
`chromium`) driven over the DevTools protocol (browser.py). Checked as a user
meets the page: every thumbnail on the first screen decodes, pointer moves over
a tile scrub through its storyboard, a click opens the probe panel, a folder
link browses into the subfolder; and with JavaScript off, the server-rendered
list still has the links and the thumbnails. Screenshots are kept in
$TN_BUILD_DIR/test-artifacts/ (gallery.png while scrubbing, gallery-probe.png,
gallery-nojs.png, gallery-dark.png).
"""

import html.parser
import os
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request

import harness
from harness import log
import browser as cdp

ARTIFACTS = os.path.join(harness.BUILD_DIR, "test-artifacts")

# name in the media root -> the hue of its test pattern (so the tiles differ)
CLIPS = {
    "plain.mp4": 0,
    "with space.mp4": 60,
    "quote\"s 'and' <b>tag & amp.mp4": 120,
    "ünïcödé 日本.mkv": 180,
    "pct%20 #hash?.mp4": 240,
    "sub folder/inner clip.mp4": 300,
}
NOT_A_VIDEO = "notes.txt"


def make_clip(path, hue, seconds=4):
    """A small H.264 clip whose picture changes over time (testsrc2's moving parts)."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=320x180:rate=15:duration=%d" % seconds,
                    "-vf", "hue=h=%d" % hue, "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-g", "15", path], check=True, stdin=subprocess.DEVNULL)


def make_media_root(parent=None):
    root = tempfile.mkdtemp(prefix="tn-gallery-", dir=parent)
    for name, hue in CLIPS.items():
        p = os.path.join(root, name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        make_clip(p, hue)
    with open(os.path.join(root, NOT_A_VIDEO), "w") as f:
        f.write("not a video\n")
    return root


def fetch(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


class Links(html.parser.HTMLParser):
    """The <a href> and <img src> of a page, and its text."""

    def __init__(self):
        super().__init__()
        self.hrefs, self.imgs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if tag == "img" and "src" in a:
            self.imgs.append(a["src"])

    def handle_data(self, data):
        self.text.append(data)


# JS run in the page: wait until every <img> whose box meets the viewport has
# finished (loaded or failed), then report them all.
FIRST_SCREEN_IMAGES = r"""
(async () => {
  const onScreen = (img) => {
    const r = img.getBoundingClientRect();
    return r.width > 0 && r.bottom > 0 && r.top < innerHeight && r.right > 0 && r.left < innerWidth;
  };
  const t0 = performance.now();
  while (performance.now() - t0 < 60000) {
    const imgs = [...document.images].filter(onScreen);
    if (imgs.every((i) => i.complete)) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return [...document.images].map((i) => ({
    src: i.currentSrc || i.src, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
    onScreen: onScreen(i), cls: i.className}));
})()
"""


def tile_box(b, index):
    return b.js("""(() => { const r = document.querySelectorAll('#grid .tile .thumb')[%d]
        .getBoundingClientRect(); return {x: r.left, y: r.top, w: r.width, h: r.height}; })()"""
                % index)


def scrub_state(b, index):
    return b.js("""(() => { const t = document.querySelectorAll('#grid .tile')[%d];
        const s = t.querySelector('.scrub');
        return {cue: t.dataset.cue === undefined ? null : +t.dataset.cue,
                scrubbing: t.classList.contains('scrubbing'),
                pos: s ? s.style.backgroundPosition : null,
                image: s ? s.style.backgroundImage : null,
                shown: s ? getComputedStyle(s).display !== 'none' : false}; })()""" % index)


def wait_js(b, expr, timeout=60):
    """Poll a JS boolean expression in the page until it holds."""
    return b.js("""(async () => { const t0 = performance.now();
        while (performance.now() - t0 < %d) { if (%s) return true;
          await new Promise((r) => setTimeout(r, 50)); } return false; })()"""
                % (timeout * 1000, expr), timeout=timeout + 10)


class GalleryTest(harness.ServersTestCase):

    def setUp(self):
        super().setUp()
        self.chromium = cdp.find_chromium()
        if self.chromium is None:
            self.skipTest("chromium not installed (Debian: apt-get install chromium)")
        self.root = make_media_root()
        self.addCleanup(subprocess.run, ["rm", "-rf", self.root])
        self.http_port = harness.free_port()
        self.srv = self.server(workers=2, extra=["--media-root", self.root,
                                                 "--http-listen",
                                                 "127.0.0.1:%d" % self.http_port])
        self.base = "http://127.0.0.1:%d" % self.http_port
        harness.wait_for(lambda: self._http_status() is not None, 30,
                         what="the HTTP gateway answering")
        status = self._http_status()
        if status == 501:
            self.skipTest("the front has no List method yet: the gallery's pages are rendered "
                          "from List")
        self.assertEqual(status, 200)
        os.makedirs(ARTIFACTS, exist_ok=True)

    def _http_status(self):
        try:
            return fetch(self.base + "/")[0]
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def browser(self, **kw):
        b = cdp.Browser(self.chromium, **kw)
        self.addCleanup(b.close)
        return b

    def test_server_rendered_listing(self):
        """GET / and GET /browse/{dir} without a browser: every name escaped, every link
        resolves (folders to pages, tiles to thumbnails that are JPEGs)."""
        status, ctype, body = fetch(self.base + "/")
        self.assertEqual(status, 200)
        self.assertIn("text/html", ctype)
        page = body.decode()
        p = Links()
        p.feed(page)
        text = "".join(p.text)
        for name in CLIPS:
            if "/" not in name:
                self.assertIn(name, text, "the name as text")
        self.assertIn(NOT_A_VIDEO, text)
        self.assertNotIn("<b>tag", page, "a name's markup must be escaped")
        self.assertIn("/browse/sub%20folder", p.hrefs)
        top = [n for n in CLIPS if "/" not in n]
        self.assertEqual(len(p.imgs), len(top), p.imgs)
        for src in p.imgs:
            status, ctype, body = fetch(self.base + src)
            self.assertEqual(status, 200, src)
            self.assertEqual(body[:3], b"\xff\xd8\xff", "%s is not a JPEG" % src)
        names = sorted(urllib.parse.unquote(urllib.parse.urlsplit(s).path)
                       [len("/v1/thumbnail/"):-len(".jpg")] for s in p.imgs)
        self.assertEqual(names, sorted(top))

        status, _, body = fetch(self.base + "/browse/sub%20folder")
        self.assertEqual(status, 200)
        sub = Links()
        sub.feed(body.decode())
        self.assertIn("/", sub.hrefs, "the breadcrumbs lead back to the root")
        self.assertEqual(len(sub.imgs), 1)
        self.assertIn("inner clip.mp4", "".join(sub.text))

    def test_folder_of_more_than_one_page(self):
        """A folder longer than one List page (1000 entries): the page ends in a "More" link
        to the next, and the two pages together list every file once."""
        many = os.path.join(self.root, "many & more")
        os.mkdir(many)
        names = ["f%04d <x>.txt" % i for i in range(1001)]
        for n in names:
            open(os.path.join(many, n), "w").close()
        seen, url, pages = [], self.base + "/browse/many%20%26%20more", 0
        while url:
            status, _, body = fetch(url)
            self.assertEqual(status, 200)
            p = Links()
            p.feed(body.decode())
            text = "".join(p.text)
            seen += [n for n in names if n in text]
            more = [h for h in p.hrefs if "?page=" in h]
            self.assertLessEqual(len(more), 1)
            url = self.base + more[0] if more else None
            pages += 1
            self.assertLess(pages, 5)
        self.assertEqual(pages, 2)
        self.assertEqual(sorted(seen), names)

    def test_browser(self):
        b = self.browser(width=1280, height=900)
        b.navigate(self.base + "/")
        imgs = b.js(FIRST_SCREEN_IMAGES, timeout=90)
        shown = [i for i in imgs if i["onScreen"]]
        log("first screen: %d image(s): %s" % (len(shown), [(i["src"], i["w"]) for i in shown]))
        self.assertEqual(len(shown), len([n for n in CLIPS if "/" not in n]))
        for i in shown:
            self.assertTrue(i["complete"], i)
            self.assertGreater(i["w"], 0, "did not decode: %s" % i["src"])

        # scrubbing: pointer moves at 10 % and 90 % of a tile's width show different
        # regions of the sprite
        box = tile_box(b, 0)
        y = box["y"] + box["h"] / 2
        b.mouse("mouseMoved", box["x"] + box["w"] * 0.1, y)
        self.assertTrue(wait_js(b, "document.querySelectorAll('#grid .tile')[0].dataset.cue"
                                   " !== undefined"), "no storyboard cue after a pointer move")
        first = scrub_state(b, 0)
        b.mouse("mouseMoved", box["x"] + box["w"] * 0.9, y)
        self.assertTrue(wait_js(b, "+document.querySelectorAll('#grid .tile')[0].dataset.cue"
                                   " !== %d" % first["cue"]))
        last = scrub_state(b, 0)
        log("scrub: %s -> %s" % (first, last))
        self.assertTrue(first["shown"] and last["shown"])
        self.assertIn("/v1/storyboard/", last["image"])
        self.assertGreater(last["cue"], first["cue"])
        self.assertNotEqual(first["pos"], last["pos"])
        b.screenshot(os.path.join(ARTIFACTS, "gallery.png"))

        # leaving the tile shows the thumbnail again
        b.mouse("mouseMoved", 1, 1)
        self.assertTrue(wait_js(b, "!document.querySelectorAll('#grid .tile')[0]"
                                   ".classList.contains('scrubbing')"))

        # a click on a tile: the probe panel with the file's duration and codec
        box = tile_box(b, 1)
        name = b.js("document.querySelectorAll('#grid .tile .name')[1].textContent")
        b.click(box["x"] + box["w"] / 2, box["y"] + box["h"] / 2)
        self.assertTrue(wait_js(b, "document.getElementById('probe').open && "
                                   "document.getElementById('probe').dataset.state !== "
                                   "'loading'"), "no probe panel after a click")
        panel = b.js("({state: document.getElementById('probe').dataset.state,"
                     " title: document.getElementById('probe-title').textContent,"
                     " text: document.querySelector('#probe .body').innerText})")
        log("probe panel: %r" % panel)
        self.assertEqual(panel["state"], "done", panel)
        self.assertEqual(panel["title"], name)
        self.assertIn("Duration", panel["text"])
        self.assertRegex(panel["text"], r"4(\.0+)? s|0:0[34]\.\d\d")
        self.assertIn("h264", panel["text"])
        self.assertIn("320×180", panel["text"])
        b.screenshot(os.path.join(ARTIFACTS, "gallery-probe.png"))
        b.send("Input.dispatchKeyEvent", type="keyDown", key="Escape", code="Escape",
               windowsVirtualKeyCode=27)
        self.assertTrue(wait_js(b, "!document.getElementById('probe').open"))

        # a folder link browses into the subfolder
        box = b.js("""(() => { const r = document.querySelector('#grid .dir a')
            .getBoundingClientRect(); return {x: r.left + r.width / 2, y: r.top + r.height / 2};
            })()""")
        b.events = [e for e in b.events if e["method"] != "Page.loadEventFired"]
        b.click(box["x"], box["y"])
        b.wait_event("Page.loadEventFired")
        self.assertEqual(b.js("location.pathname"), "/browse/sub%20folder")
        imgs = b.js(FIRST_SCREEN_IMAGES, timeout=90)
        self.assertEqual([(i["w"] > 0) for i in imgs if i["onScreen"]], [True])
        self.assertIn("inner clip.mp4", b.js("document.body.innerText"))

    def test_animated_preview_when_the_pointer_rests(self):
        u = urllib.parse.quote("plain.mp4")
        try:
            fetch(self.base + "/v1/animated/%s.webp?width=320" % u)
        except urllib.error.HTTPError as e:
            if e.code == 501:
                self.skipTest("the engine has no animated previews yet (501)")
            raise
        b = self.browser(width=1280, height=900)
        b.navigate(self.base + "/")
        index = b.js("[...document.querySelectorAll('#grid .tile')].findIndex("
                     "(t) => t.dataset.u === %r)" % u)
        self.assertGreaterEqual(index, 0)
        box = tile_box(b, index)
        b.mouse("mouseMoved", box["x"] + box["w"] / 2, box["y"] + box["h"] / 2)
        self.assertTrue(wait_js(b, "document.querySelectorAll('#grid .tile')[%d]"
                                   ".classList.contains('animating')" % index),
                        "no animated preview while the pointer rests")
        anim = b.js("""(() => { const i = document.querySelectorAll('#grid .tile')[%d]
            .querySelector('.anim'); return {src: i.src, w: i.naturalWidth,
            shown: getComputedStyle(i).display !== 'none'}; })()""" % index)
        self.assertIn("/v1/animated/", anim["src"])
        self.assertGreater(anim["w"], 0)
        self.assertTrue(anim["shown"])
        b.mouse("mouseMoved", box["x"] + box["w"] / 4, box["y"] + box["h"] / 2)
        self.assertTrue(wait_js(b, "!document.querySelectorAll('#grid .tile')[%d]"
                                   ".classList.contains('animating')" % index),
                        "a pointer move goes back to scrubbing")

    def test_browser_without_javascript(self):
        b = self.browser(width=1000, height=800)
        b.send("Emulation.setScriptExecutionDisabled", value=True)
        b.navigate(self.base + "/")
        imgs = b.js(FIRST_SCREEN_IMAGES, timeout=90)
        shown = [i for i in imgs if i["onScreen"]]
        self.assertGreater(len(shown), 0)
        for i in shown:
            self.assertGreater(i["w"], 0, "did not decode: %s" % i["src"])
        links = b.js("[...document.querySelectorAll('a')].map((a) => a.getAttribute('href'))")
        self.assertIn("/browse/sub%20folder", links)
        self.assertTrue(any(l.startswith("/v1/probe/") for l in links), links)
        # the page's own script did not run: no tile got the scrubbing parts
        self.assertEqual(b.js("document.querySelectorAll('.scrub').length"), 0)
        b.screenshot(os.path.join(ARTIFACTS, "gallery-nojs.png"))
        # the dark scheme follows the system's preference
        light = b.js("getComputedStyle(document.body).backgroundColor")
        b.send("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme",
                                                        "value": "dark"}])
        dark = b.js("getComputedStyle(document.body).backgroundColor")
        self.assertNotEqual(light, dark)
        b.screenshot(os.path.join(ARTIFACTS, "gallery-dark.png"))


if __name__ == "__main__":
    harness.main()
