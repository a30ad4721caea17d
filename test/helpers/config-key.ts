import { ConfigError } from '../../src/config/error.js';
import { backendSchema, parseConfig } from '../../src/config/schema.js';

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

/** What the config says to one backend entry (as backends[0]): its ConfigError message, or 'accepted'. */
export const backendRefusal = (raw: unknown): string => {
  try {
    parseConfig(backendSchema, raw, 'backends[0]');
  } catch (e) {
    if (e instanceof ConfigError) return e.message;
    throw e;
  }
  return 'accepted';
};
