"""Takes README's screenshot of the context inspector: `ragctx serve`'s /ui in headless Chromium, the bundled
sample question run with the default chain at rate 0.25 beside `bm25` at 0.1.

    .venv/bin/python docs/inspector_screenshot.py [--out docs/inspector.png]

Needs Debian's chromium and chromium-driver (setup.sh installs them) and the models of the embedded
defaults; it serves on a free loopback port and stops when done.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from ragctx.api import create_app
from ragctx.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "inspector.png")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1500)
    args = parser.parse_args()

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(load_settings()), log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={args.width},{args.height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=DriverService("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"http://127.0.0.1:{sock.getsockname()[1]}/ui")
        driver.find_element(By.ID, "sample").click()
        driver.find_element(By.ID, "compare").click()
        driver.find_element(By.ID, "method-b").send_keys("bm25")
        driver.find_element(By.ID, "run").click()
        status = driver.find_element(By.ID, "status")
        WebDriverWait(driver, 300).until(lambda d: status.text.startswith(("Done", "Error")))
        driver.execute_script("document.getElementById('results').scrollIntoView()")
        args.out.write_bytes(driver.get_screenshot_as_png())
        print(f"wrote {args.out} ({status.text})")
    finally:
        driver.quit()
        server.should_exit = True


if __name__ == "__main__":
    main()
