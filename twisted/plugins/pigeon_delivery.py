from twisted.application.service import ServiceMaker

pigeon_delivery = ServiceMaker(
    "pigeon-delivery",
    "pigeonpush.delivery.tap",
    "PigeonPush delivery worker: routes queued notifications to push servers, answers pulls",
    "pigeon-delivery",
)
