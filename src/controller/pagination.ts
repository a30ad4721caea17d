import { aborted, invalidArgument } from '../errors/domain-error.js';

export interface Page<T> {
  items: T[];
  nextToken: string;
}

/**
 * Pages over items sorted by id. The token is the last id handed out, so a
 * page boundary survives creates and deletes between calls: the next page
 * starts after that id whether or not it still exists.
 *
 * `visible` hides items (volumes being created or deleted) without copying
 * the list: a page looks only at the items it hands out and the ones it
 * skips, not at every item on every call.
 */
export function paginate<T>(
  sorted: T[],
  idOf: (t: T) => string,
  maxEntries: number | undefined,
  token: string | undefined,
  tokenValid: (t: string) => boolean,
  visible: (t: T) => boolean = () => true,
): Page<T> {
  const max = maxEntries ?? 0;
  if (!Number.isInteger(max) || max < 0) throw invalidArgument('max_entries must not be negative');
  let start = 0;
  if (token) {
    if (!tokenValid(token)) throw aborted(`starting_token "${token.slice(0, 64)}" was not issued by this plugin; list again without it`);
    // Binary search for the first id after the token.
    let lo = 0;
    let hi = sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (idOf(sorted[mid]!) <= token) lo = mid + 1;
      else hi = mid;
    }
    start = lo;
  }
  const items: T[] = [];
  let i = start;
  for (; i < sorted.length && (max === 0 || items.length < max); i++) if (visible(sorted[i]!)) items.push(sorted[i]!);
  // A next page exists only if some visible item follows this one.
  while (i < sorted.length && !visible(sorted[i]!)) i++;
  const nextToken = i < sorted.length && items.length > 0 ? idOf(items[items.length - 1]!) : '';
  return { items, nextToken };
}
