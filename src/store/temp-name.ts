/** Temp files atomic-file.ts leaves behind only when the process dies mid-write (kept apart so the start-up worker need not load that module and node:crypto). */
export function isAtomicTemp(name: string): boolean {
  return name.startsWith('.') && name.endsWith('.tmp');
}
