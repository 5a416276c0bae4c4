"""Helpers shared by the tests that open a page in headless Chromium: the browser, the links of a page,
and a script that lists how each image of the page loaded."""
import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import List

import pytest
from PIL import Image


class Links(HTMLParser):
    """Every ``src`` and ``href`` of a page, in order (``links``)."""

    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ('src', 'href'):
                self.links.append(v)


def chromium() -> str:
    """The Chromium executable; skips the test when there is none."""
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip('no Chromium installed (Debian: apt-get install chromium); the report is not checked in a browser')


def run_browser(args, tmp_path, timeout=120):
    """Headless Chromium with ``args``, offline and with a fresh profile under ``tmp_path``."""
    flags = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
             '--disable-background-networking', '--disable-component-update', '--disable-sync',
             f'--user-data-dir={tmp_path / "chromium-profile"}']
    return subprocess.run([chromium()] + flags + args, capture_output=True, text=True, timeout=timeout)


# inserted before </body>: once loaded, the page lists [src, complete, naturalWidth, naturalHeight] of each image
IMG_CHECK = """<script>
window.addEventListener('load', function () {
  var out = document.createElement('pre');
  out.id = 'imgcheck';
  out.textContent = JSON.stringify(Array.prototype.map.call(document.images, function (i) {
    return [i.getAttribute('src'), i.complete, i.naturalWidth, i.naturalHeight];
  }));
  document.body.appendChild(out);
});
</script>"""


def assert_images_load(page: Path, tmp_path: Path) -> List[list]:
    """Open ``page`` in Chromium (a copy beside it, so relative links resolve the same way) and check that
    every image loaded, from the very file it links (the same pixel size). Returns
    ``[src, complete, width, height]`` of each image."""
    text = page.read_text()
    check = page.with_name('browser_check.html')
    check.write_text(text.replace('</body>', IMG_CHECK + '\n</body>'))
    try:
        proc = run_browser(['--virtual-time-budget=10000', '--dump-dom', check.as_uri()], tmp_path)
    finally:
        check.unlink()
    found = re.search(r'<pre id="imgcheck">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stderr[-2000:]
    images = json.loads(html.unescape(found.group(1)))
    assert len(images) == text.count('<img ')
    broken = [src for src, complete, w, h in images if not (complete and w > 0 and h > 0)]
    assert not broken, broken
    for src, _, w, h in images:
        with Image.open(page.parent / src) as img:
            assert (w, h) == img.size, src  # the browser decoded the very file
    return images
