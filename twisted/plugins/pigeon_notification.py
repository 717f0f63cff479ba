from pigeonpush.plugin import DaemonMaker

pigeon_notification = DaemonMaker(
    "pigeon-notification",
    "pigeonpush.notification.tap",
    "PigeonPush notification API: application servers submit notifications over HTTP",
    "pigeon-notification",
)
