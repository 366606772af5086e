from twisted.application.service import ServiceMaker

tcphub = ServiceMaker(
    "tcphub", "tcphub.tap", "A TCP hub: framed messages, echo or broadcast.", "tcphub"
)
tcphub_ws = ServiceMaker(
    "tcphub-ws", "tcphub.wstap", "A WebSocket client that logs every message it routes.", "tcphub-ws"
)
