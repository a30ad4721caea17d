/**
 * The one error type of sinter's domain. Backends, target helpers, connectors
 * and the services throw it; only src/csi knows how it becomes a gRPC status.
 * Its message goes to the caller verbatim, so it must name the field or object
 * at fault, say what to do, and never carry a secret, a stack or a host path
 * the caller did not send. (Models: ceph-csi's internal/rbd/errors.go,
 * os-brick's exception hierarchy.)
 */
export type ErrorCode =
  | 'invalid-argument'
  | 'not-found'
  | 'already-exists'
  | 'failed-precondition'
  | 'out-of-range'
  | 'resource-exhausted'
  | 'aborted'
  | 'unavailable'
  | 'permission-denied'
  | 'deadline-exceeded'
  | 'cancelled'
  | 'unimplemented'
  | 'internal';

/** The codes by their conventional upper-case names, for readable comparisons (`e.code === Code.ABORTED`). */
export const Code = {
  INVALID_ARGUMENT: 'invalid-argument',
  NOT_FOUND: 'not-found',
  ALREADY_EXISTS: 'already-exists',
  FAILED_PRECONDITION: 'failed-precondition',
  OUT_OF_RANGE: 'out-of-range',
  RESOURCE_EXHAUSTED: 'resource-exhausted',
  ABORTED: 'aborted',
  UNAVAILABLE: 'unavailable',
  PERMISSION_DENIED: 'permission-denied',
  DEADLINE_EXCEEDED: 'deadline-exceeded',
  CANCELLED: 'cancelled',
  UNIMPLEMENTED: 'unimplemented',
  INTERNAL: 'internal',
} as const satisfies Record<string, ErrorCode>;

export class DomainError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.code = code;
    this.name = 'DomainError';
  }
}

/**
 * UNAVAILABLE because a backend has no credentials yet (rbd keyFrom: secrets before the first
 * request that brings a key): the scheduler and GetCapacity answer it rather than leave the backend out.
 */
export class AwaitingCredentialsError extends DomainError {
  constructor(message: string) {
    super('unavailable', message);
    this.name = 'AwaitingCredentialsError';
  }
}

export const invalidArgument = (m: string) => new DomainError('invalid-argument', m);
export const notFound = (m: string) => new DomainError('not-found', m);
export const alreadyExists = (m: string) => new DomainError('already-exists', m);
export const failedPrecondition = (m: string) => new DomainError('failed-precondition', m);
export const outOfRange = (m: string) => new DomainError('out-of-range', m);
export const resourceExhausted = (m: string) => new DomainError('resource-exhausted', m);
export const aborted = (m: string) => new DomainError('aborted', m);
export const unavailable = (m: string) => new DomainError('unavailable', m);
export const internal = (m: string) => new DomainError('internal', m);

/** A value shown in an error message: quoted, escaped, cut short. */
export function shown(v: string, max = 80): string {
  const cut = v.length > max ? `${v.slice(0, max)}…` : v;
  return JSON.stringify(cut);
}
