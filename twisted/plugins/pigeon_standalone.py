from pigeonpush.plugin import DaemonMaker

pigeon_standalone = DaemonMaker(
    "pigeon-standalone",
    "pigeonpush.standalone.tap",
    "All of PigeonPush in one process (reglog, notification, delivery, one push server)",
    "pigeon-standalone",
)
