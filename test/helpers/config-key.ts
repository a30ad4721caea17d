import { ConfigError } from '../../src/config/error.js';

/** The configuration key a ConfigError names, or undefined when fn does not throw one. */
export const keyOf = (fn: () => unknown): string | undefined => {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConfigError) return e.key;
    throw e;
  }
  return undefined;
};
