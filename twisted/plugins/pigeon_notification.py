from twisted.application.service import ServiceMaker

pigeon_notification = ServiceMaker(
    "pigeon-notification",
    "pigeonpush.notification.tap",
    "PigeonPush notification API: application servers submit notifications over HTTP",
    "pigeon-notification",
)
