from pigeonpush.plugin import DaemonMaker

pigeon_delivery = DaemonMaker(
    "pigeon-delivery",
    "pigeonpush.delivery.tap",
    "PigeonPush delivery worker: routes queued notifications to push servers, answers pulls",
    "pigeon-delivery",
)
