"""
Browsers in the hub: two pages of the chat page in headless Chromium and
one raw TCP socket (what C{nc} is) chat through one C{twistd tcphub
--websocket}, as the README says to try it.
"""

from __future__ import annotations

import os
import socket

from tests.browser import in_browser, require_chromium
from tests.processes import Twistd

WEBSOCKET = r"tcphub websocket listening on (?P<host>[^ ]+):(?P<port>\d+)"


def read_until(sock: socket.socket, wanted: bytes) -> bytes:
    data = b""
    while wanted not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {wanted!r}: {data!r}"
        data += chunk
    return data


def test_two_pages_and_a_tcp_socket_chat_through_one_hub(tmp_path):
    require_chromium()
    with Twistd("tcphub", "--port", "0", "--websocket", "tcp:0:interface=127.0.0.1") as twistd:
        _, port = twistd.wait_listening()
        page_url = f"http://127.0.0.1:{int(twistd.wait_for(WEBSOCKET)['port'])}/"
        nc = socket.create_connection(("127.0.0.1", port), timeout=30)
        nc.sendall(b"/nick carol\n")
        read_until(nc, b"you are now carol")
        shots = [str(tmp_path / "alice.png"), str(tmp_path / "bob.png")]

        def chat(browser) -> list[list[str]]:
            pages = [browser.new_page(), browser.new_page()]
            for page, nick in zip(pages, ("alice", "bob")):
                page.goto(page_url)
                page.wait_for_function("document.getElementById('state').textContent === 'connected'")
                page.fill("#text", f"/nick {nick}")
                page.press("#text", "Enter")
                page.wait_for_selector(f"#log li:has-text('you are now {nick}')")
            alice, bob = pages
            alice.fill("#text", "hello from alice")
            alice.press("#text", "Enter")
            bob.wait_for_selector("#log li:has-text('<alice> hello from alice')")
            read_until(nc, b"#lobby <alice> hello from alice\n")
            nc.sendall(b"hello from nc\n")
            for page in pages:
                page.wait_for_selector("#log li:has-text('<carol> hello from nc')")
            bob.fill("#text", "hello from bob")
            bob.press("#text", "Enter")
            alice.wait_for_selector("#log li:has-text('<bob> hello from bob')")
            read_until(nc, b"#lobby <bob> hello from bob\n")
            for page, shot in zip(pages, shots):
                page.screenshot(path=shot, full_page=True)
            return [page.eval_on_selector_all("#log li", "items => items.map(i => i.textContent)")
                    for page in pages]

        try:
            alice_log, bob_log = in_browser(chat)
        finally:
            nc.close()
        assert "#lobby <bob> hello from bob" in alice_log and "#lobby <carol> hello from nc" in alice_log
        assert "#lobby <alice> hello from alice" in bob_log and "#lobby <carol> hello from nc" in bob_log
        assert "hello from alice" in alice_log, "a page shows what it sent"
        assert all(os.path.getsize(shot) > 1000 for shot in shots)
        twistd.shutdown()


def test_the_page_logs_in_with_a_token_from_its_fragment_or_asks_for_one(tmp_path):
    import jwt

    require_chromium()
    secret = "an HMAC secret of thirty-two bytes or more, for HS256"
    key = tmp_path / "jwt-key"
    key.write_text(secret)
    alice = jwt.encode({"sub": "alice", "name": "Alice"}, secret, algorithm="HS256")
    bob = jwt.encode({"sub": "bob", "name": "Bob", "rooms": ["lobby"]}, secret, algorithm="HS256")
    with Twistd("tcphub", "--port", "0", "--auth-jwt-key", str(key),
                "--websocket", "tcp:0:interface=127.0.0.1") as twistd:
        page_url = f"http://127.0.0.1:{int(twistd.wait_for(WEBSOCKET)['port'])}/"

        def log_in(browser) -> tuple[str, list[str], str]:
            first, second = browser.new_page(), browser.new_page()
            first.goto(f"{page_url}#token={alice}")
            first.wait_for_selector("#log li:has-text('welcome, Alice')")
            address = first.evaluate("location.href")
            second.goto(page_url)
            second.wait_for_selector("#log li:has-text('this hub asks who you are')")
            kind = second.eval_on_selector("#text", "input => input.type")
            second.fill("#text", bob)
            second.press("#text", "Enter")
            second.wait_for_selector("#log li:has-text('welcome, Bob')")
            second.fill("#text", "hello from bob")
            second.press("#text", "Enter")
            first.wait_for_selector("#log li:has-text('<Bob> hello from bob')")
            second.fill("#text", "/join secret")
            second.press("#text", "Enter")
            second.wait_for_selector("#log li:has-text('not among your rooms')")
            return address, second.eval_on_selector_all("#log li", "items => items.map(i => i.textContent)"), kind

        address, bob_log, kind = in_browser(log_in)
        twistd.shutdown()
    assert address == page_url, "the token left the address bar"
    assert kind == "password", "the token is asked for as a secret"
    assert not any(bob in line or alice in line for line in bob_log), "no token shown"
    assert alice not in twistd.output and bob not in twistd.output and secret not in twistd.output
