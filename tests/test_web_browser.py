"""
Browsers in the hub: two pages of the chat page in headless Chromium and
one raw TCP socket (what C{nc} is) chat through one C{twistd tcphub
--websocket}, as the README says to try it.
"""

from __future__ import annotations

import json
import os
import re
import socket
from contextlib import contextmanager
from datetime import datetime, timezone

from tests.browser import in_browser, require_chromium
from tests.processes import Twistd

WEBSOCKET = r"tcphub websocket listening on (?P<host>[^ ]+):(?P<port>\d+)"


def line(text: str) -> str:
    """The selector of a shown line that the hub sent (or the page sent) as C{text}."""
    return "#log li[data-line=%s]" % json.dumps(text)


@contextmanager
def chat_with_the_page(history: int):
    """The chat with C{history} lines per room and lines of at most 200
    bytes, the page on --websocket: yields twistd, an nc-like socket
    connected to it (closed after), and the page's address."""
    with Twistd("tcphub", "--port", "0", "--room-history", str(history), "--max-frame", "200",
                "--websocket", "tcp:0:interface=127.0.0.1") as twistd:
        _, port = twistd.wait_listening()
        page_url = f"http://127.0.0.1:{int(twistd.wait_for(WEBSOCKET)['port'])}/"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as nc:
            yield twistd, nc, page_url


def lines_of(page) -> list[str]:
    return page.eval_on_selector_all("#log li", "items => items.map(i => i.dataset.line)")


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
                page.wait_for_selector(f"#me:has-text('you are {nick}')")
            alice, bob = pages
            alice.fill("#text", "hello from alice")
            alice.press("#text", "Enter")
            bob.wait_for_selector(line("#lobby <alice> hello from alice"))
            read_until(nc, b"#lobby <alice> hello from alice\n")
            nc.sendall(b"hello from nc\n")
            for page in pages:
                page.wait_for_selector(line("#lobby <carol> hello from nc"))
            bob.fill("#text", "hello from bob")
            bob.press("#text", "Enter")
            alice.wait_for_selector(line("#lobby <bob> hello from bob"))
            read_until(nc, b"#lobby <bob> hello from bob\n")
            for page, shot in zip(pages, shots):
                page.screenshot(path=shot, full_page=True)
            return [lines_of(page) for page in pages]

        try:
            alice_log, bob_log = in_browser(chat)
        finally:
            nc.close()
        assert "#lobby <bob> hello from bob" in alice_log and "#lobby <carol> hello from nc" in alice_log
        assert "#lobby <alice> hello from alice" in bob_log and "#lobby <carol> hello from nc" in bob_log
        assert "#lobby <alice> hello from alice" in alice_log, "a page shows what it sent, as the others see it"
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
            first.wait_for_selector("#me:has-text('you are Alice')")
            address = first.evaluate("location.href")
            second.goto(page_url)
            second.wait_for_selector("#log li:has-text('this hub asks who you are')")
            kind = second.eval_on_selector("#token", "input => input.type")
            second.fill("#token", bob)
            second.press("#token", "Enter")
            second.wait_for_selector("#me:has-text('you are Bob')")
            second.fill("#text", "hello from bob")
            second.press("#text", "Enter")
            first.wait_for_selector(line("#lobby <Bob> hello from bob"))
            second.fill("#text", "/join secret")
            second.press("#text", "Enter")
            second.wait_for_selector("#log li:has-text('not among your rooms')")
            shown = second.eval_on_selector_all("#log li, header, aside", "items => items.map(i => i.textContent)")
            return address, lines_of(second) + shown, kind

        address, bob_log, kind = in_browser(log_in)
        twistd.shutdown()
    assert address == page_url, "the token left the address bar"
    assert kind == "password", "the token is asked for as a secret"
    assert not any(bob in line or alice in line for line in bob_log), "no token shown"
    assert alice not in twistd.output and bob not in twistd.output and secret not in twistd.output


DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def test_the_chat_page_shows_rooms_who_its_name_times_and_history_and_comes_back_after_a_drop(tmp_path):
    """What a person sees: the rooms they are in, who is here (joins and
    leaves as they happen), their own name, when each line was said, the
    room's history on joining, pasted lines sent as lines, and a clear state
    when the connection drops; back, it has its name and rooms again.
    Screenshots at desktop and phone widths are kept in the test's folder."""
    require_chromium()
    with chat_with_the_page(20) as (twistd, nc, page_url):
        nc.sendall(b"/nick carol\n/join games\nhello games\n/join lobby\nmorning all\n")
        read_until(nc, b"* you are in #games\n* you are in #lobby\n")

        def who(page) -> list[str]:
            return page.eval_on_selector_all("#who li", "items => items.map(i => i.textContent)")

        def rooms(page) -> list[str]:
            return page.eval_on_selector_all("#rooms button.room", "items => items.map(i => i.textContent)")

        def use(browser) -> dict:
            seen: dict = {}
            alice = browser.new_page(viewport=DESKTOP)
            alice.goto(page_url)
            alice.wait_for_selector("#state.open")
            alice.fill("#text", "/nick alice")
            alice.press("#text", "Enter")
            alice.wait_for_selector("#me:has-text('you are alice')")
            alice.wait_for_selector("#who li.you:has-text('alice (you)')")
            seen["history"] = alice.eval_on_selector(
                "#log li[data-line$='] #lobby <carol> morning all']",
                "item => [item.className, item.dataset.line, item.querySelector('time').textContent, "
                "item.querySelector('.nick').textContent, item.querySelector('.body').textContent]")
            seen["who at first"] = sorted(who(alice))
            bob = browser.new_page(viewport=PHONE)
            bob.goto(page_url)
            bob.wait_for_selector("#state.open")
            bob.fill("#text", "/nick bob")
            bob.press("#text", "Enter")
            alice.wait_for_selector("#who li:has-text('bob')")  # as it happens, no reload
            alice.wait_for_selector("#log li.notice:has-text('joined')")
            alice.wait_for_selector("#log li.notice:has-text('is now bob')")
            seen["who with bob"] = sorted(who(alice))
            bob.wait_for_selector("#me:has-text('you are bob')")
            alice.fill("#room", "#games")
            alice.press("#room", "Enter")
            alice.wait_for_selector("#rooms li.current:has-text('#games')")
            alice.wait_for_selector("#here:has-text('In #games (2)')")
            seen["rooms"] = rooms(alice)
            seen["who in games"] = sorted(who(alice))
            seen["games history"] = alice.is_visible("#log li.history[data-line$='] #games <carol> hello games']")
            alice.fill("#text", "line one\nline two")  # as pasted: two lines, two messages
            alice.press("#text", "Enter")
            seen["nc"] = read_until(nc, b"#games <alice> line two\n")
            nc.sendall(b"/join games\nhi alice\n")
            alice.wait_for_selector(line("#games <carol> hi alice"))
            bob.fill("#text", "lobby only")
            bob.press("#text", "Enter")
            read_until(nc, b"#lobby <bob> lobby only\n")
            seen["unread"] = alice.eval_on_selector("#rooms li:has-text('#lobby') .unread", "badge => badge.textContent")
            bob.screenshot(path=str(tmp_path / "phone.png"))
            seen["phone overflow"] = bob.evaluate("document.documentElement.scrollWidth - innerWidth")
            seen["phone rooms"] = bob.is_visible("#rooms") and bob.is_visible("#people")
            bob.close()
            alice.click("#rooms button.room:has-text('#lobby')")
            alice.wait_for_selector("#rooms li.current:has-text('#lobby')")
            alice.wait_for_selector("#log li.notice:has-text('bob left')")
            seen["who after bob"] = sorted(who(alice))
            alice.screenshot(path=str(tmp_path / "desktop.png"))
            # Over the hub's max_frame: the hub closes the page's connection; the page comes back.
            alice.fill("#text", "x" * 300)
            alice.press("#text", "Enter")
            alice.wait_for_selector("#log li.divider:has-text('disconnected')")
            alice.wait_for_selector("#state.open")
            alice.wait_for_selector("#me:has-text('you are alice')")
            alice.wait_for_selector("#rooms button.room:has-text('#games')")
            seen["rooms again"] = sorted(rooms(alice))
            alice.wait_for_selector("#rooms li.current:has-text('#games')")
            seen["said once"] = alice.eval_on_selector_all(
                "#log li[data-line$='#games <carol> hi alice']", "items => items.length")
            twistd.shutdown()
            alice.wait_for_selector("body.offline #banner:has-text('Reconnecting in')")
            seen["offline input"] = alice.eval_on_selector("#text", "text => text.disabled")
            alice.screenshot(path=str(tmp_path / "desktop-offline.png"))
            alice.set_viewport_size(PHONE)
            alice.screenshot(path=str(tmp_path / "phone-offline.png"))
            return seen

        seen = in_browser(use)
    assert seen["history"][0] == "history" and seen["history"][3:] == ["carol", "morning all"]
    assert re.match(r"\[\d\d:\d\d UTC\] ", seen["history"][1]), "the hub said when it was said"
    assert re.fullmatch(r"\d\d:\d\d", seen["history"][2]), "and the page shows it"
    assert seen["who at first"] == ["alice (you)", "carol"]
    assert seen["who with bob"] == ["alice (you)", "bob", "carol"]
    assert seen["rooms"] == ["#lobby", "#games"] and seen["games history"]
    assert seen["who in games"] == ["alice (you)", "carol"]
    assert seen["nc"].endswith(b"#games <alice> line one\n#games <alice> line two\n")
    assert seen["unread"] == "1", "a line in the room not shown is counted on its tab"
    assert seen["phone overflow"] <= 0 and seen["phone rooms"]
    assert seen["who after bob"] == ["alice (you)", "carol"]
    assert seen["rooms again"] == ["#games", "#lobby"], "back with its rooms"
    assert seen["said once"] == 1, "the history replayed on joining again shows only what the page had not"
    assert seen["offline input"] is True
    for shot in ("desktop.png", "phone.png", "desktop-offline.png", "phone-offline.png"):
        assert (tmp_path / shot).stat().st_size > 5000, shot


class Reader:
    """Lines from a raw TCP socket (what nc prints), kept until asked for."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.buffer = b""

    def until(self, wanted: bytes) -> bytes:
        """What came up to and including the first C{wanted}."""
        while wanted not in self.buffer:
            chunk = self.socket.recv(65536)
            assert chunk, f"closed before {wanted!r}: {self.buffer!r}"
            self.buffer += chunk
        end = self.buffer.index(wanted) + len(wanted)
        said, self.buffer = self.buffer[:end], self.buffer[end:]
        return said


def test_the_chat_page_cut_by_the_server_comes_back_as_itself_with_what_was_said_meanwhile(tmp_path):
    """The hub cuts the page's connection (a line over --max-frame: close
    1009); while the page waits to reconnect (its timers held by the test),
    carol says two lines; back, the page has its name and rooms (the hub
    resumed its session: no /nick, no guest) and shows the two lines once.
    Cut again while carol says more than the room's history keeps, the page
    says, in the room, that some of it is lost."""
    require_chromium()
    with chat_with_the_page(2) as (twistd, nc, page_url):
        carol = Reader(nc)
        nc.sendall(b"/nick carol\n/join games\n")
        carol.until(b"* you are in #games\n")

        def cut(alice, *meanwhile: bytes) -> bytes:
            """Cut alice, have carol say C{meanwhile} while she is away, let her
            page reconnect; what carol saw from the cut on."""
            # The page's timers wait (it reconnects 0.5 s after a drop).
            alice.clock.pause_at(datetime.fromtimestamp(alice.evaluate("Date.now()") / 1000 + 1, timezone.utc))
            alice.fill("#text", "x" * 300)
            alice.press("#text", "Enter")
            alice.wait_for_selector("#log li.divider:has-text('disconnected (1009')")
            seen = carol.until(b"* alice left #games")
            nc.sendall(b"".join(each + b"\n" for each in meanwhile) + b"/who\n")
            seen += carol.until(b"* in #games: carol\n")  # said, and the hub has it
            alice.clock.resume()  # the reconnect timer fires
            alice.wait_for_selector("#state.open")
            return seen + carol.until(b"* alice joined #games\n")

        def count(alice, text: str) -> int:
            return alice.eval_on_selector_all(f"#log li[data-line$={json.dumps(text)}]", "items => items.length")

        def use(browser) -> dict:
            seen: dict = {}
            alice = browser.new_page()
            alice.clock.install()
            alice.goto(page_url)
            alice.wait_for_selector("#state.open")
            for typed in ("/nick alice", "/join games"):
                alice.fill("#text", typed)
                alice.press("#text", "Enter")
            alice.wait_for_selector("#rooms li.current:has-text('#games')")
            carol.until(b"* alice joined #games\n")
            nc.sendall(b"before the cut\n")
            alice.wait_for_selector(line("#games <carol> before the cut"))

            seen["carol saw"] = cut(alice, b"said while alice was away", b"and more")
            alice.wait_for_selector("#log li[data-line$='#games <carol> and more']")
            seen["me"] = alice.text_content("#me")
            seen["rooms"] = alice.eval_on_selector_all("#rooms button.room", "items => items.map(i => i.textContent)")
            seen["current"] = alice.text_content("#rooms li.current button.room")
            seen["counts"] = [count(alice, f"#games <carol> {text}")
                              for text in ("before the cut", "said while alice was away", "and more")]
            seen["warnings"] = alice.eval_on_selector_all("#log li.warning", "items => items.length")
            alice.screenshot(path=str(tmp_path / "resumed.png"))

            cut(alice, b"one", b"two", b"three")  # three lines; the room keeps two
            alice.wait_for_selector("#log li.warning:has-text('some of what was said while you were away is lost')")
            seen["lost"] = [count(alice, f"#games <carol> {text}") for text in ("one", "two", "three")]
            seen["me again"] = alice.text_content("#me")
            return seen

        seen = in_browser(use)
        twistd.shutdown()
    assert seen["me"] == "you are alice" and seen["me again"] == "you are alice"
    assert b"is now alice" not in seen["carol saw"], "the hub gave the name back: the page did not /nick"
    assert seen["rooms"] == ["#lobby", "#games"] and seen["current"] == "#games"
    assert seen["counts"] == [1, 1, 1], "what was said meanwhile, once; nothing twice"
    assert seen["warnings"] == 0
    assert seen["lost"] == [0, 0, 0], "a room that cannot give all it missed gives none of it, and says so"
