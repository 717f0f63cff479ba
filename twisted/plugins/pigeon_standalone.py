from twisted.application.service import ServiceMaker

pigeon_standalone = ServiceMaker(
    "pigeon-standalone",
    "pigeonpush.standalone.tap",
    "All of PigeonPush in one process (reglog, notification, delivery, one push server)",
    "pigeon-standalone",
)
