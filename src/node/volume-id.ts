import { invalidArgument, notFound, shown } from '../errors/domain-error.js';

/**
 * The node's view of a volume id: it never parses the backend part, it only
 * makes sure the id is safe to use as a lock key and a state file name.
 * Starts with a letter or digit, then letters, digits and . _ - : + @ =,
 * at most 128 characters. So no '/', no NUL, no whitespace, never '.' or '..'.
 */
export const VOLUME_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._:+@=-]{0,127}$/;
export const MAX_VOLUME_ID_LENGTH = 128;

/**
 * Missing → INVALID_ARGUMENT (a required field); malformed → NOT_FOUND (the
 * spec's answer for a volume that does not exist; no volume can have that id).
 */
export function checkVolumeId(raw: unknown): string {
  if (typeof raw !== 'string' || raw === '') throw invalidArgument('volume_id is required');
  if (!VOLUME_ID_RE.test(raw)) {
    const why =
      raw.length > MAX_VOLUME_ID_LENGTH
        ? `is ${raw.length} characters long; at most ${MAX_VOLUME_ID_LENGTH} are allowed`
        : 'contains characters a sinter volume id never has (allowed: letters, digits and . _ - : + @ =, starting with a letter or digit)';
    throw notFound(`volume_id ${shown(raw)} ${why}, so no such volume exists on this node`);
  }
  return raw;
}
