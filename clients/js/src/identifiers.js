// The grammar of the names a device gives: the rules of the Python package's
// pigeonpush/identifiers.py, which tests/test_identifiers.py holds this
// module to.

/** clientId: 1 to 128 ASCII letters, digits, '.', '_', ':' or '-' (reglog's rule). */
export const CLIENT_ID = /^[A-Za-z0-9._:-]{1,128}$/;
export const CLIENT_ID_RULE = "a string of 1 to 128 ASCII letters, digits, '.', '_', ':' or '-'";
/** A topic name: 1 to 128 ASCII letters, digits, '.', '_', '~' or '-'. */
export const TOPIC = /^[A-Za-z0-9._~-]{1,128}$/;
export const TOPIC_RULE = "a string of 1 to 128 ASCII letters, digits, '.', '_', '~' or '-'";

/** Whether `value` is a valid clientId. */
export function isClientId(value) {
  return typeof value === "string" && CLIENT_ID.test(value);
}

/** Whether `value` is a valid topic name. */
export function isTopic(value) {
  return typeof value === "string" && TOPIC.test(value);
}
