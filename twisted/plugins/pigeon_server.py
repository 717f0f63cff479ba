from pigeonpush.plugin import DaemonMaker

pigeon_server = DaemonMaker(
    "pigeon-server",
    "pigeonpush.server.tap",
    "PigeonPush push server (device connections)",
    "pigeon-server",
)
