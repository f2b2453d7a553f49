"""Drives the chat page of a running `fulcrum serve` in headless Chromium (Debian's chromium and chromium-driver):
loads it, sends a message, watches the answer stream in, and checks it against the API's answer to the same request.
Usage: chat_page.py BASE_URL"""
import json
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from common import check

base = sys.argv[1]


options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]:
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    driver.set_page_load_timeout(60)
    driver.get(base + "/")
    check(driver.title == "Fulcrum chat", "the page loads")
    deadline = time.time() + 30
    while "context" not in driver.find_element(By.ID, "model").text and time.time() < deadline:
        time.sleep(0.1)
    check("qwen2.5-coder-0.5b-instruct" in driver.find_element(By.ID, "model").text, "the page names the served model")
    # Greedy settings, as a user would type them in the settings panel.
    driver.find_element(By.CSS_SELECTOR, "details summary").click()
    for field, value in [("temperature", "0"), ("max_tokens", "40"), ("system", "You are terse.")]:
        element = driver.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    driver.find_element(By.CSS_SELECTOR, "details summary").click()
    prompt = "Write a Python function that reverses a string."
    driver.find_element(By.ID, "input").send_keys(prompt)
    driver.find_element(By.ID, "send").click()
    lengths = []
    deadline = time.time() + 120
    while time.time() < deadline:
        bubbles = driver.find_elements(By.CSS_SELECTOR, ".message.assistant")
        if bubbles:
            lengths.append(len(bubbles[-1].find_element(By.CSS_SELECTOR, ".content").text))
            if bubbles[-1].get_attribute("data-done") == "true":
                break
        time.sleep(0.02)
    bubble = driver.find_elements(By.CSS_SELECTOR, ".message.assistant")[-1]
    check(bubble.get_attribute("data-done") == "true", "the answer finishes")
    shown = bubble.find_element(By.CSS_SELECTOR, ".content").get_attribute("textContent")
    stats = bubble.find_element(By.CSS_SELECTOR, ".stats").text
    partial = sorted({n for n in lengths if 0 < n < len(shown)})
    check(len(partial) >= 2, f"the answer streams in ({len(partial)} partial lengths seen)")
    check("tokens/s" in stats and stats.startswith("40 tokens"), f"tokens per second are shown: {stats}")
    body = {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": prompt}],
            "temperature": 0, "top_p": 0.95, "max_tokens": 40}
    api = json.loads(urllib.request.urlopen(urllib.request.Request(
        base + "/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})).read())
    check(shown == api["choices"][0]["message"]["content"], "the page shows what the API answers")
    check(not driver.find_elements(By.CSS_SELECTOR, ".message.error"), "no error on the page")
finally:
    driver.quit()
