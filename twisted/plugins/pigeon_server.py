from twisted.application.service import ServiceMaker

pigeon_server = ServiceMaker(
    "pigeon-server",
    "pigeonpush.server.tap",
    "PigeonPush push server (device connections)",
    "pigeon-server",
)
