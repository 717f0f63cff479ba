from twisted.application.service import ServiceMaker

pigeon_reglog = ServiceMaker(
    "pigeon-reglog",
    "pigeonpush.reglog.tap",
    "PigeonPush route service: tokens and push server choice over HTTP",
    "pigeon-reglog",
)
