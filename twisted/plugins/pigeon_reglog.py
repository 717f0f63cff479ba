from pigeonpush.plugin import DaemonMaker

pigeon_reglog = DaemonMaker(
    "pigeon-reglog",
    "pigeonpush.reglog.tap",
    "PigeonPush route service: tokens and push server choice over HTTP",
    "pigeon-reglog",
)
