import { status } from '@grpc/grpc-js';

export { status as Code };

/**
 * The one error type that crosses a service boundary. Its message goes to the
 * caller verbatim, so it must name the field or object at fault and never carry
 * a secret, a stack or a host path the caller did not send.
 */
export class CsiError extends Error {
  readonly code: status;
  constructor(code: status, message: string) {
    super(message);
    this.code = code;
    this.name = 'CsiError';
  }
}

export const invalidArgument = (m: string) => new CsiError(status.INVALID_ARGUMENT, m);
export const notFound = (m: string) => new CsiError(status.NOT_FOUND, m);
export const alreadyExists = (m: string) => new CsiError(status.ALREADY_EXISTS, m);
export const failedPrecondition = (m: string) => new CsiError(status.FAILED_PRECONDITION, m);
export const outOfRange = (m: string) => new CsiError(status.OUT_OF_RANGE, m);
export const resourceExhausted = (m: string) => new CsiError(status.RESOURCE_EXHAUSTED, m);
export const aborted = (m: string) => new CsiError(status.ABORTED, m);
export const unavailable = (m: string) => new CsiError(status.UNAVAILABLE, m);
export const internal = (m: string) => new CsiError(status.INTERNAL, m);

/** Turns anything thrown into a CsiError without leaking a stack to the caller. */
export function toCsiError(e: unknown): CsiError {
  if (e instanceof CsiError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  return new CsiError(status.INTERNAL, `internal error: ${msg.split('\n')[0]}`);
}

export function codeName(code: status): string {
  return status[code] ?? String(code);
}

/** A value shown in an error message: quoted, escaped, cut short. */
export function shown(v: string, max = 80): string {
  const cut = v.length > max ? `${v.slice(0, max)}…` : v;
  return JSON.stringify(cut);
}
