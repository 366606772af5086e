from twisted.application.service import ServiceMaker

tcphub = ServiceMaker(
    "tcphub", "tcphub.tap", "A TCP hub: framed messages, echo or broadcast.", "tcphub"
)
