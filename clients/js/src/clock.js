// Time, injected: the client reads the time and sets its timers through a
// clock object, so tests drive it without waiting (as Twisted's Clock does).

/**
 * Where the client reads the time and sets its timers (milliseconds): the
 * platform's, looked up at each call. Tests pass a fake one.
 */
export const SYSTEM_CLOCK = Object.freeze({
  now: () => Date.now(),
  setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle),
});
