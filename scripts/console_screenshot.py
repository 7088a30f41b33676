"""The README's console screenshot (docs/console-search.png): a search by a box dragged on the query, with its hits.

Starts a server in this process (a token, the HTTP port, a temporary data directory), registers the tests'
photos (and a crop and a resize of two of them), then drives headless Chromium as the browser tests do: signs
in, picks a photo of a coffee and a rocket side by side, drags a box over the rocket, searches, and saves the
page downscaled to ``--width`` pixels as a 256-colour PNG (small enough for the repository). Needs Debian's
``chromium`` and ``chromium-driver`` (``scripts/install-browser.sh``).

    .venv/bin/python scripts/console_screenshot.py [--out docs/console-search.png] [--width 1000]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
TOKEN = "console-screenshot-token-0123456789"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "console-search.png")
    ap.add_argument("--width", type=int, default=1000)
    args = ap.parse_args()
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        sys.exit("needs chromium and chromedriver: scripts/install-browser.sh")
    sys.path.insert(0, str(REPO / "tests"))
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig
    from photos import crop, encode, photo, resize
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory(prefix="lookalike-screenshot-") as tmp:
        running = create_server(ServerConfig(port=0, http_port=0, token=TOKEN, snapshot_interval_s=0,
                                             data_dir=Path(tmp)))  # fmt: skip
        service = running.service
        service.create_database("photos", keep="thumbnail")
        images = {n: encode(photo(n), quality=90) for n in ("coffee", "rocket", "astronaut", "camera", "chelsea",
                                                            "hubble_deep_field", "immunohistochemistry")}  # fmt: skip
        images["rocket-crop"] = encode(crop(photo("rocket"), 0.7))
        images["coffee-small"] = encode(resize(photo("coffee"), 0.5))
        for group, data in images.items():
            service.set_image("photos", group, 0, data, None, attributes={"source": f"{group}.jpg"})
        left, right = (Image.fromarray(photo(n)).resize((600, 400), Image.BICUBIC) for n in ("coffee", "rocket"))
        both = Image.new("RGB", (1200, 400))
        both.paste(left, (0, 0))
        both.paste(right, (600, 0))
        query = Path(tmp) / "coffee-and-rocket.jpg"
        query.write_bytes(encode(both, quality=90))

        options = Options()
        options.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                    "--window-size=1280,1000", "--force-device-scale-factor=1"):  # fmt: skip
            options.add_argument(arg)
        d = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        try:
            wait = WebDriverWait(d, 120).until
            base = f"http://127.0.0.1:{running.http_port}/ui"
            d.get(base + "/search?db=photos")
            d.find_element(By.ID, "token").send_keys(TOKEN + Keys.ENTER)
            wait(lambda _: d.current_url.endswith("/ui/search?db=photos"))
            d.find_element(By.ID, "image").send_keys(str(query))
            loaded = "return [...document.querySelectorAll(arguments[0])].every(i => i.complete && i.naturalWidth > 0)"
            wait(lambda _: d.execute_script(loaded, ".crop-stage img"))
            stage, img = d.find_element(By.CSS_SELECTOR, ".crop-stage"), d.find_element(By.CSS_SELECTOR, ".crop-image")
            w, h = img.size["width"], img.size["height"]
            (ActionChains(d).move_to_element_with_offset(stage, w // 20, -h // 2 + 4).click_and_hold()
             .move_by_offset(w // 2 - w // 20 - 6, h - 8).release().perform())  # fmt: skip
            top_k = d.find_element(By.ID, "top_k")
            top_k.clear()
            top_k.send_keys("6")
            d.execute_script("document.getElementById('results').dataset.replaced = 'not yet'")
            d.find_element(By.CSS_SELECTOR, "#search-form button[type=submit]").click()
            wait(lambda _: d.execute_script("const e = document.getElementById('results'); return !!e && "
                                            "!e.dataset.replaced && e.querySelector('.tile')"))  # fmt: skip
            height = d.execute_script("return document.documentElement.scrollHeight")
            d.set_window_size(1280, height + 140)  # the whole page in the window (lazy images load too)
            wait(lambda _: d.execute_script(loaded, "#results img"))
            shot = Image.open(io.BytesIO(d.get_screenshot_as_png())).convert("RGB")
        finally:
            d.quit()
            running.stop(0)
    shot = shot.crop((0, 0, min(shot.width, 1280), min(shot.height, height)))
    small = shot.resize((args.width, round(shot.height * args.width / shot.width)), Image.LANCZOS)
    small = small.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    small.save(args.out, "PNG", optimize=True)
    print(f"{args.out}: {small.width} x {small.height}, {args.out.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
