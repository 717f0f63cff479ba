"""pigeon-standalone: every PigeonPush part in one process."""
